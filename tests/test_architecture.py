"""The tree's layers (pyproject.toml, [tool.importlinter]; docs/architecture.md), checked by
import-linter's layers contract on grimp's import graph: imports inside functions count.

1. `config`: entry points (settings, URLs, asgi, wsgi, serve_ws) that put the rest together.
2. `chat`: the chat app.
3. `parley`: serving plumbing any Django Channels app needs, nothing about chat.
4. `parley_runtime`: the tuned runtime, the only code touching other libraries' internals.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(config: Path, src: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), str(config), "--no-cache"],
        cwd=src,
        env={**os.environ, "PYTHONPATH": str(src)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def contract() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]


def test_every_package_in_src_is_a_layer_of_the_contract():
    packages = {p.parent.name for p in SRC.glob("*/__init__.py")}
    (layers,) = [c["layers"] for c in contract()["contracts"] if c["type"] == "layers"]
    assert set(contract()["root_packages"]) == set(layers) == packages


def test_no_module_imports_from_a_layer_above_its_own():
    result = lint_imports(REPO / "pyproject.toml", SRC)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_contract_catches_an_import_from_a_layer_above(tmp_path):
    """The same contract on a tree where the plumbing imports the app, inside a function."""
    for package in contract()["root_packages"]:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "chat" / "views.py").write_text("")
    (tmp_path / "parley" / "health.py").write_text("def check():\n    from chat import views\n")
    config = tmp_path / "pyproject.toml"
    config.write_text((REPO / "pyproject.toml").read_text())
    result = lint_imports(config, tmp_path)
    assert result.returncode != 0
    assert "parley.health -> chat.views" in result.stdout
