"""Render the deploy/k8s overlays the way a user's `kubectl apply -k` would, offline.

The overlays need their git-ignored secrets.env: the rendering happens in a temporary copy
of deploy/ where each overlay's secrets.env.example stands in for it.
"""

from __future__ import annotations

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

Doc = dict[str, Any]


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        raise RuntimeError(
            "kubectl not found: the deploy/k8s checks render with `kubectl kustomize` "
            "(kubectl >= 1.27, for kustomize `labels`); install kubectl and re-run."
        )
    return path


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
