"""Render the deploy/k8s overlays the way a user's `kubectl apply -k` would, offline.

The overlays need their git-ignored secrets.env: the rendering happens in a temporary copy
of deploy/ where each overlay's secrets.env.example stands in for it.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("dev", "production")
# Kubernetes version whose schemas the rendered output must satisfy (kubernetes-validate).
K8S_VERSION = "1.35.0"
# kustomize `labels` with includeTemplates needs kustomize 5.0+ (kubectl 1.27+).
MIN_KUSTOMIZE = (5, 0)

Doc = dict[str, Any]


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        raise RuntimeError(
            "kubectl not found: the deploy/k8s checks render with `kubectl kustomize` "
            f"(kustomize {MIN_KUSTOMIZE[0]}.{MIN_KUSTOMIZE[1]}+ inside, i.e. kubectl 1.27+)."
        )
    version = _kustomize_version(path)
    if version < MIN_KUSTOMIZE:
        raise RuntimeError(
            f"{path} embeds kustomize {version}; the overlays need {MIN_KUSTOMIZE}+ "
            "(`labels`, components): use kubectl 1.27 or newer."
        )
    return path


@functools.cache
def _kustomize_version(path: str) -> tuple[int, int]:
    out = subprocess.run(
        [path, "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    found = re.match(r"v?(\d+)\.(\d+)", json.loads(out).get("kustomizeVersion", ""))
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


def stage(workdir: Path) -> Path:
    """A copy of deploy/ with every overlay's secrets.env taken from its example."""
    copy = workdir / "deploy"
    shutil.copytree(DEPLOY, copy, ignore=shutil.ignore_patterns("secrets.env"))
    for example in (copy / "k8s" / "overlays").glob("*/secrets.env.example"):
        shutil.copy(example, example.with_name("secrets.env"))
    return copy


def build(kustomization: Path) -> list[Doc]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(kustomization)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {kustomization} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]
