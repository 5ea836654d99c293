"""The tree's layers, lowest first; no module imports a module of a layer above its own.

1. `parley_runtime`: the tuned runtime, the only code that touches other libraries'
   internals (docs/runtime.md). It imports no project module, so it can be upgraded, or
   switched to stock, without reading the project.
2. `parley` plumbing: logging, metrics, overload admission, drain, auth hashing: what any
   Django Channels app needs, nothing about chat.
3. `chat`: the app (consumers, delivery, services, selectors, fragments, views).
4. wiring: the Django project's settings, URLs and entry points, which put 1-3 together.

Read from the source (ast), imports inside functions included: a lazy import is still a
dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
WIRING = {
    "parley.settings",
    "parley.urls",
    "parley.asgi",
    "parley.wsgi",
    "parley.serve_ws",
    "parley.ws_auth",
}


def layer(module: str) -> int | None:
    """The layer of a project module; None for anything else (libraries, the stdlib)."""
    top = module.split(".")[0]
    if top == "parley_runtime":
        return 1
    if top == "parley":
        return 4 if any(module == w or module.startswith(w + ".") for w in WIRING) else 2
    if top == "chat":
        return 3
    return None


def project_modules() -> dict[str, Path]:
    modules = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts and parts[0] in ("parley_runtime", "parley", "chat"):
            modules[".".join(parts)] = path
    return modules


def imports_of(module: str, path: Path) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            # `from chat import views` imports chat.views
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {name for name in found if layer(name) is not None}


MODULES = project_modules()


def test_every_package_of_the_tree_is_found():
    tops = {name.split(".")[0] for name in MODULES}
    assert tops == {"parley_runtime", "parley", "chat"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_module_above_it(module):
    own = layer(module)
    above = sorted(
        f"{name} (layer {layer(name)})"
        for name in imports_of(module, MODULES[module])
        if name in MODULES or name.rpartition(".")[0] in MODULES
        if layer(name) > own
    )
    assert not above, f"{module} (layer {own}) imports {', '.join(above)}"


def test_the_runtime_imports_no_project_module():
    for module, path in MODULES.items():
        if layer(module) == 1:
            project = {n for n in imports_of(module, path) if layer(n) != 1}
            assert not project, f"{module} imports {sorted(project)}"
