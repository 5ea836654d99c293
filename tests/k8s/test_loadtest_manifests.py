"""loadtest/k8s: Locust's master Job and worker Deployment for a cluster deployment, rendered
as `kubectl apply -k loadtest/k8s` would, validated strictly, checked against the overlays
it runs beside (the Secret's keys, the network flows) and against the load generator's image
(loadtest/Dockerfile)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import kubernetes_validate
import pytest

from tests.k8s.render import K8S_VERSION, REPO, Doc, build, stage
from tests.k8s.test_manifests import (
    LABELS,
    _flows,
    all_containers,
    generated,
    of_kind,
    one,
    pod,
    workloads,
)

LOADTEST = REPO / "loadtest"


@pytest.fixture(scope="module")
def loadtest_docs() -> list[Doc]:
    return build(LOADTEST / "k8s")


@pytest.fixture(scope="module")
def beside_production(tmp_path_factory: pytest.TempPathFactory) -> list[Doc]:
    """The production overlay and the load test, applied together into one namespace."""
    copy = stage(tmp_path_factory.mktemp("k8s-loadtest"))
    shutil.copytree(LOADTEST / "k8s", copy / "loadtest-k8s")
    both = copy / "both"
    both.mkdir()
    (both / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [../k8s/overlays/production, ../loadtest-k8s]\n"
    )
    return build(both)


def knobs(docs: list[Doc]) -> dict[str, str]:
    return generated(docs, "ConfigMap", "loadtest-knobs")["data"]


def test_renders_and_validates_strictly(loadtest_docs: list[Doc]) -> None:
    kinds = sorted(d["kind"] for d in loadtest_docs)
    assert kinds == ["ConfigMap", "Deployment", "Job"] + ["NetworkPolicy"] * 4 + ["Service"]
    for doc in loadtest_docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        labels = doc["metadata"].get("labels", {})
        assert all(label in labels for label in LABELS), doc["metadata"]["name"]


def test_workers_find_the_master_and_the_master_waits_for_all_of_them(
    loadtest_docs: list[Doc],
) -> None:
    master, workers = (
        one(loadtest_docs, "Job", "loadtest-master"),
        one(loadtest_docs, "Deployment", "loadtest-worker"),
    )
    service = one(loadtest_docs, "Service", "loadtest-master")
    (worker,) = pod(workers)["containers"]
    args = worker["args"]
    assert "--worker" in args and args[args.index("--master-host") + 1] == "loadtest-master"
    assert service["metadata"]["name"] == "loadtest-master"
    # Locust's master listens for workers on 5557 unless told otherwise.
    (master_container,) = pod(master)["containers"]
    ports = {p["name"]: p["containerPort"] for p in master_container["ports"]}
    assert ports["workers"] == 5557 == service["spec"]["ports"][0]["port"]
    assert service["spec"]["ports"][0]["targetPort"] == "workers"
    labels = master["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    assert workers["spec"]["replicas"] == int(knobs(loadtest_docs)["LOCUST_EXPECT_WORKERS"])
    assert "--master" in master_container["args"] and "--headless" in master_container["args"]
    # A failed run is the result: not retried, and not a pod restarted behind its back.
    assert master["spec"]["backoffLimit"] == 0
    assert pod(master)["restartPolicy"] == "Never"


def test_the_master_reads_the_users_the_seeding_wrote(loadtest_docs: list[Doc]) -> None:
    master = one(loadtest_docs, "Job", "loadtest-master")
    (seed,) = pod(master)["initContainers"]
    (container,) = pod(master)["containers"]
    script = " ".join(seed["command"])
    written = re.search(r"--out (\S+)", script).group(1)
    assert container["args"][container["args"].index("--users-file") + 1] == written
    shared = {m["name"] for m in seed["volumeMounts"] if written.startswith(m["mountPath"])}
    assert shared and shared <= {m["name"] for m in container["volumeMounts"]}
    assert "seed_loadtest" in script and "--password" in script
    # No password in the manifests: a fresh one per run, kept in the users file only.
    assert "secrets.token_urlsafe" in script
    env = {e["name"]: e for e in seed.get("env", [])}
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"] == "POOLED_DATABASE_URL"


def test_images_are_the_app_s_for_seeding_and_the_load_generator_s_for_locust(
    loadtest_docs: list[Doc],
) -> None:
    images = {c["name"]: c["image"] for w in workloads(loadtest_docs) for c in all_containers(w)}
    assert images["seed"].startswith("registry.example.com/parley:")
    assert images["master"] == images["worker"]
    assert images["master"].startswith("registry.example.com/parley-loadtest:")
    dockerfile = (LOADTEST / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["locust"]' in dockerfile
    # What the image copies is what the locustfile imports (a missing module fails at start).
    copied = set(re.findall(r"loadtest/(\w+\.py)", dockerfile))
    sources = "".join((LOADTEST / f).read_text() for f in copied if (LOADTEST / f).exists())
    imports = re.findall(r"^from loadtest(?:\.(\w+) import| import (\w+))", sources, re.M)
    imported = {"locustfile.py"} | {f"{a or b}.py" for a, b in imports}
    assert imported <= copied, imported - copied
    for name in copied | {"locust.conf", "requirements.lock"}:
        assert f"!loadtest/{name}" in (REPO / ".dockerignore").read_text(), name


def test_every_container_is_locked_down_with_resources(loadtest_docs: list[Doc]) -> None:
    for workload in workloads(loadtest_docs):
        assert pod(workload)["automountServiceAccountToken"] is False
        for container in all_containers(workload):
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"], container["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], container["name"]
            assert container["resources"]["limits"], container["name"]


def test_the_load_generator_pins_what_the_dev_lock_pins() -> None:
    """loadtest/requirements.lock: locust and websocket-client at requirements-dev.lock's
    versions (what the tests ran), every entry with its hashes."""

    def pins(path: Path) -> dict[str, str]:
        return dict(re.findall(r"^([a-z0-9_.-]+)==([^\s;\\]+)", path.read_text(), re.M))

    lock, dev = pins(LOADTEST / "requirements.lock"), pins(REPO / "requirements-dev.lock")
    assert {"locust", "websocket-client", "gevent"} <= set(lock)
    assert all(dev.get(name) == version for name, version in lock.items()), {
        n: (v, dev.get(n)) for n, v in lock.items() if dev.get(n) != v
    }
    entries = [
        e
        for e in (LOADTEST / "requirements.lock").read_text().replace("\\\n", " ").splitlines()
        if e and e[0].isalpha()
    ]
    assert all("--hash=sha256:" in e for e in entries)


def test_beside_production_every_flow_it_needs_is_open_both_ways(
    beside_production: list[Doc],
) -> None:
    flows = _flows(beside_production)
    internal = flows["internal"]
    assert ("loadtest-worker", "loadtest-master", "TCP", 5557) in internal
    assert ("loadtest-master", "pgbouncer", "TCP", 6432) in internal
    egress = flows["egress"]
    for role in ("loadtest-master", "loadtest-worker"):
        assert (role, ("cidr", "192.0.2.0/24"), "TCP", 443) in egress
        assert (role, ("namespace", "kube-system", "k8s-app=kube-dns"), "UDP", 53) in egress
    # Nothing else of the app's opened for it.
    assert {f for f in internal if "loadtest" in f[0] or "loadtest" in f[1]} == {
        ("loadtest-worker", "loadtest-master", "TCP", 5557),
        ("loadtest-master", "pgbouncer", "TCP", 6432),
    }
    # The Secret and ConfigMap the seeding reads are the overlay's.
    master = one(beside_production, "Job", "loadtest-master")
    (seed,) = pod(master)["initContainers"]
    names = {list(ref.values())[0]["name"] for ref in seed["envFrom"]}
    for kind, prefix in (("Secret", "parley-secrets"), ("ConfigMap", "parley-config")):
        assert generated(beside_production, kind, prefix)["metadata"]["name"] in names
    assert of_kind(beside_production, "Job")
