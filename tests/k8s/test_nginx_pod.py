"""The nginx pod as rendered, started for real: the ConfigMap's files at the mount paths, the
container's command and args, the pod's UID/GID, a read-only root filesystem with the
emptyDir on /tmp. It must start and answer its probe path on the container port.

A private mount and network namespace (unshare) stands in for the container, so the host's
/etc/nginx, /tmp and ports are untouched. nginx is Debian's, the same as the native stack's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from deploy.stack.stackctl import ensure_nginx
from tests import apt
from tests.k8s.render import Doc, build, stage
from tests.tiers import missing


def need_namespaces() -> None:
    """A private mount and network namespace: root, with util-linux's unshare and setpriv."""
    lacking = [tool for tool in ("unshare", "setpriv") if not shutil.which(tool)]
    if lacking:
        missing(" and ".join(lacking), "needed for the pod's namespaces", apt.command("util-linux"))
    if os.geteuid() != 0:
        missing("root", "the pod's mount and network namespaces need root", "make test as root")


# Runs inside the namespace: mounts, then nginx as the pod's user, then one probe, then the
# caller's extra checks (spec["probe"], Python that adds to `result`).
POD = r"""
import json, subprocess, sys, time, urllib.request
spec = json.loads(sys.argv[1])
def sh(*cmd): subprocess.run(cmd, check=True)
sh("ip", "link", "set", "lo", "up")
for address in spec.get("addresses", []):
    sh("ip", "addr", "add", address, "dev", "lo")
sh("mount", "--bind", spec["etc_nginx"], "/etc/nginx")
sh("mount", "--bind", spec["hosts"], "/etc/hosts")
sh("mount", "--bind", spec["tmp"], "/tmp")
sh("mount", "-o", "remount,bind,ro", "/")
nginx = subprocess.Popen(
    ["setpriv", f"--reuid={spec['uid']}", f"--regid={spec['gid']}", "--clear-groups",
     "sh", "-c", 'exec "$@" >/tmp/nginx.out 2>&1', "sh", *spec["argv"]], cwd="/")
result = {"root_read_only": False, "status": None}
try:
    open("/root-write-check", "w")
except OSError:
    result["root_read_only"] = True
deadline = time.monotonic() + 20
while time.monotonic() < deadline and nginx.poll() is None:
    try:
        with urllib.request.urlopen(spec["url"], timeout=2) as response:
            result["status"] = response.status
            break
    except OSError:
        time.sleep(0.1)
if result["status"] == 200:
    exec(spec.get("probe", ""))
result["exited"] = nginx.poll()
nginx.terminate()
nginx.wait(timeout=20)
result["log"] = open("/tmp/nginx.out").read()[-2000:]
print(json.dumps(result))
"""


def nginx_pod(tmp_path: Path, overlay: str = "dev") -> tuple[Doc, dict[str, str]]:
    docs = build(stage(tmp_path) / "k8s" / "overlays" / overlay)
    deployment = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "nginx"
    )
    config = next(
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("nginx-config-")
    )
    return deployment["spec"]["template"]["spec"], config["data"]


def lay_out_config(spec: Doc, data: dict[str, str], etc_nginx: Path) -> None:
    """Writes each ConfigMap key where the container's mounts put it (all under /etc/nginx)."""
    volumes = {v["name"]: v.get("configMap") for v in spec["volumes"]}
    for mount in spec["containers"][0]["volumeMounts"]:
        source = volumes.get(mount["name"])
        if not source:
            continue
        assert mount["mountPath"].startswith("/etc/nginx/"), mount
        target = etc_nginx / mount["mountPath"].removeprefix("/etc/nginx/")
        items = {i["path"]: i["key"] for i in source.get("items", [])} or {k: k for k in data}
        if "subPath" in mount:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(data[items[mount["subPath"]]])
        else:
            target.mkdir(parents=True, exist_ok=True)
            for path, key in items.items():
                (target / path).write_text(data[key])


def run_pod(
    tmp_path: Path, overlay: str = "dev", probe: str = "", addresses: tuple[str, ...] = ()
) -> tuple[dict, Doc]:
    """Starts the overlay's nginx pod in a private namespace (loopback plus `addresses`),
    probes it, runs `probe` in there; the result and the rendered pod spec."""
    need_namespaces()
    nginx = ensure_nginx()
    spec, data = nginx_pod(tmp_path / "render", overlay)
    container = spec["containers"][0]
    etc_nginx, tmp = tmp_path / "etc-nginx", tmp_path / "emptydir-tmp"
    etc_nginx.mkdir()
    tmp.mkdir()
    # An emptyDir is writable by the pod's fsGroup; here, by its user.
    os.chown(tmp, spec["securityContext"]["runAsUser"], spec["securityContext"]["fsGroup"])
    lay_out_config(spec, data, etc_nginx)
    hosts = tmp_path / "hosts"
    # The Service names in upstreams.conf, which nginx resolves at start.
    hosts.write_text("127.0.0.1 localhost web ws\n")
    port = container["ports"][0]["containerPort"]
    path = container["readinessProbe"]["httpGet"]["path"]
    pod_spec = {
        "etc_nginx": str(etc_nginx),
        "hosts": str(hosts),
        "tmp": str(tmp),
        "uid": spec["securityContext"]["runAsUser"],
        "gid": spec["securityContext"]["runAsGroup"],
        "argv": [
            nginx if container["command"][0] == "nginx" else container["command"][0],
            *container["command"][1:],
            *container["args"],
        ],
        "url": f"http://127.0.0.1:{port}{path}",
        "addresses": list(addresses),
        "probe": probe,
    }
    run = subprocess.run(
        ["unshare", "--mount", "--net", sys.executable, "-c", POD, json.dumps(pod_spec)],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["status"] == 200, f"nginx did not answer {path}: {result}"
    assert result["exited"] is None, result["log"]
    return result, spec


def test_nginx_pod_starts_non_root_on_a_read_only_root(tmp_path: Path) -> None:
    result, _ = run_pod(tmp_path)
    assert result["root_read_only"], "the check ran with a writable root"
