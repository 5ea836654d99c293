"""deploy/k8s: every overlay renders, validates strictly, passes the policy scan, and keeps
the invariants the deployment depends on (issue "Kubernetes"). No cluster: rendered YAML."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

from deploy.pgbouncer.config import read_policy
from tests.k8s.render import K8S, K8S_VERSION, OVERLAYS, REPO, Doc, build, stage

APP_ROLES = {"web": 8000, "ws": 8001}
LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
)
GATEWAY_API = "gateway.networking.k8s.io/v1"
COMPOSE = REPO / "docker-compose.prod.yml"


# --- rendering ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = stage(tmp_path_factory.mktemp("k8s"))
    # The optional Ingress component, as a user would add it to an overlay.
    check = copy / "k8s" / "overlays" / "ingress-check"
    check.mkdir()
    (check / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: parley\n"
        "resources: [../dev]\ncomponents: [../../components/ingress]\n"
    )
    return copy


@pytest.fixture(scope="module")
def rendered(staged: Path) -> dict[str, list[Doc]]:
    overlays = staged / "k8s" / "overlays"
    return {name: build(overlays / name) for name in (*OVERLAYS, "ingress-check")}


@pytest.fixture(params=OVERLAYS)
def docs(request: pytest.FixtureRequest, rendered: dict[str, list[Doc]]) -> list[Doc]:
    return rendered[request.param]


def of_kind(docs: list[Doc], *kinds: str) -> list[Doc]:
    return [d for d in docs if d["kind"] in kinds]


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def generated(docs: list[Doc], kind: str, prefix: str) -> Doc:
    """A generator's output: its name carries a content hash suffix."""
    found = [
        d
        for d in of_kind(docs, kind)
        if re.fullmatch(rf"{prefix}-[a-z0-9]{{10}}", d["metadata"]["name"])
    ]
    assert len(found) == 1, f"expected one generated {kind} {prefix}-<hash>"
    return found[0]


def workloads(docs: list[Doc]) -> list[Doc]:
    return of_kind(docs, "Deployment", "StatefulSet", "Job", "CronJob")


def template(workload: Doc) -> Doc:
    """The pod template (a CronJob's is inside its job template)."""
    spec = workload["spec"]
    return spec["jobTemplate"]["spec"]["template"] if "jobTemplate" in spec else spec["template"]


def pod(workload: Doc) -> Doc:
    return template(workload)["spec"]


def role(workload: Doc) -> str:
    return template(workload)["metadata"]["labels"]["app.kubernetes.io/component"]


def all_containers(workload: Doc) -> Iterator[Doc]:
    spec = pod(workload)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def app_config(docs: list[Doc]) -> dict[str, str]:
    return generated(docs, "ConfigMap", "parley-config")["data"]


def test_every_overlay_renders_the_whole_stack(rendered: dict[str, list[Doc]]) -> None:
    for name in OVERLAYS:
        kinds = {(d["kind"], d["metadata"]["name"]) for d in rendered[name]}
        for kind, obj in [
            ("Namespace", "parley"),
            ("Deployment", "web"),
            ("Deployment", "ws"),
            ("Deployment", "nginx"),
            ("Job", "migrate"),
            ("Service", "web"),
            ("Service", "ws"),
            ("Service", "nginx"),
            ("NetworkPolicy", "default-deny-all"),
        ]:
            assert (kind, obj) in kinds, f"{name}: no {kind}/{obj}"
        generated(rendered[name], "Secret", "parley-secrets")
        generated(rendered[name], "ConfigMap", "nginx-config")
        for doc in rendered[name]:
            if doc["kind"] != "Namespace":
                assert doc["metadata"]["namespace"] == "parley", doc["metadata"]["name"]


def test_dev_runs_its_own_datastores_and_production_managed_ones(
    rendered: dict[str, list[Doc]],
) -> None:
    dev, prod = rendered["dev"], rendered["production"]
    postgres = one(dev, "StatefulSet", "postgres")
    assert postgres["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    one(dev, "StatefulSet", "redis")
    assert not of_kind(prod, "StatefulSet"), "production uses managed Postgres/Redis"
    assert {d["metadata"]["name"] for d in of_kind(dev, "HorizontalPodAutoscaler")} == set()


def test_production_shards_the_channel_layer_over_several_redis() -> None:
    env = _env_file(K8S / "overlays" / "production" / "secrets.env.example")
    # Parley's settings split REDIS_URL on commas, one channel-layer host per entry.
    urls = [u for u in env["REDIS_URL"].split(",") if u]
    assert len(urls) >= 2 and len(set(urls)) == len(urls)
    assert all(u.startswith(("redis://", "rediss://")) for u in urls)


# --- schemas and policy scan --------------------------------------------------------------


def test_rendered_output_validates_strictly(docs: list[Doc]) -> None:
    unchecked = set()
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except SchemaNotFoundError:
            # CRDs: kubernetes-validate ships core schemas only; Gateway API objects are
            # checked by test_gateway_route_reaches_nginx instead.
            assert doc["apiVersion"] == GATEWAY_API, f"no schema for {doc['kind']}"
            unchecked.add(doc["kind"])
    assert unchecked <= {"Gateway", "HTTPRoute"}


def test_strict_validation_rejects_an_unknown_field(rendered: dict[str, list[Doc]]) -> None:
    deployment = json.loads(json.dumps(one(rendered["dev"], "Deployment", "ws")))
    pod(deployment)["containers"][0]["livenesProbe"] = {}  # a typo strict mode must catch
    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbe"):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_checkov_finds_nothing(staged: Path, rendered: dict[str, list[Doc]]) -> None:
    checkov = REPO / ".venv-checkov" / "bin" / "checkov"
    if not checkov.exists():
        subprocess.run(
            ["make", "-s", ".venv-checkov/.installed"], cwd=REPO, check=True, timeout=600
        )
    files = []
    for name in (*OVERLAYS, "ingress-check"):
        out = staged / f"{name}.yaml"
        out.write_text(yaml.safe_dump_all(rendered[name], sort_keys=False))
        files += ["-f", str(out)]
    result = subprocess.run(
        [str(checkov), "--config-file", str(K8S / ".checkov.yaml"), *files, "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report = json.loads(result.stdout)
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == [], f"checkov findings: {failed}"
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] > 100, report["summary"]


# --- labels -------------------------------------------------------------------------------


def test_every_object_and_pod_carries_the_app_labels(docs: list[Doc]) -> None:
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        assert all(k in labels for k in LABELS), (doc["kind"], doc["metadata"]["name"])
    for workload in workloads(docs):
        labels = template(workload)["metadata"]["labels"]
        assert all(k in labels for k in LABELS) and "app.kubernetes.io/component" in labels


def test_kustomizations_use_labels_not_common_labels() -> None:
    for path in (*K8S.rglob("kustomization.yaml"), REPO / "deploy/nginx/kustomization.yaml"):
        assert "commonLabels" not in yaml.safe_load(path.read_text()), path


# --- containers: probes, resources, securityContext ---------------------------------------


def test_every_container_has_resources_and_a_locked_down_security_context(
    docs: list[Doc],
) -> None:
    for workload in workloads(docs):
        spec, where = pod(workload), workload["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert spec["automountServiceAccountToken"] is False, where
        # Service links would put WS_PORT=tcp://... into the ws role's environment.
        assert spec["enableServiceLinks"] is False, where
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in all_containers(workload):
            name = f"{where}/{container['name']}"
            for kind in ("requests", "limits"):
                assert set(container["resources"][kind]) >= {"cpu", "memory"}, name
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", name
            assert "privileged" not in sc and "add" not in sc["capabilities"], name
            # A read-only root needs somewhere to write temporary files.
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            if container["name"] not in ("postgres", "redis"):
                assert "emptyDir" in volumes[mounts["/tmp"]], name


def test_every_long_running_container_has_three_probes(docs: list[Doc]) -> None:
    for workload in of_kind(docs, "Deployment", "StatefulSet"):
        for container in pod(workload)["containers"]:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe in container, f"{workload['metadata']['name']}: no {probe}"


@pytest.mark.parametrize("name", sorted(APP_ROLES))
def test_app_probes_use_health_endpoints_liveness_never_dependencies(
    docs: list[Doc],
    name: str,
) -> None:
    deployment = one(docs, "Deployment", name)
    container = pod(deployment)["containers"][0]
    config = app_config(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": APP_ROLES[name], "metrics": int(config["METRICS_PORT"])}
    paths = {"startupProbe": "/healthz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for probe, path in paths.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path and get["port"] == "http", (name, probe)
        # No Host header: the kubelet sends the pod's address, and the health endpoints are
        # answered before Django's Host check (tests/parley/test_health.py), so ALLOWED_HOSTS
        # needs no `localhost` (which is also an allowed websocket Origin).
        assert "httpHeaders" not in get, (name, probe)
    # wait_for_deps runs before the server: the startup budget must outlast its timeout.
    startup = container["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert budget > float(config["WAIT_FOR_DEPS_TIMEOUT"]) + 10


def test_production_allows_no_loopback_host(rendered: dict[str, list[Doc]]) -> None:
    """Every ALLOWED_HOSTS name is also an allowed websocket Origin: `localhost` there let a
    page on anyone's localhost open sockets with a user's cookie."""
    hosts = app_config(rendered["production"])["ALLOWED_HOSTS"].split(",")
    assert not {"localhost", "127.0.0.1", "[::1]"} & set(hosts), hosts


def test_ws_grace_period_covers_prestop_and_drain(docs: list[Doc]) -> None:
    spec = pod(one(docs, "Deployment", "ws"))
    pre_stop = spec["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    config = app_config(docs)
    # config.serve_ws exits at the latest WS_DRAIN_DELAY + CHAT_DRAIN_SECONDS + WS_DRAIN_GRACE
    # after SIGTERM, which comes after the preStop hook.
    drain = sum(
        float(config[k]) for k in ("WS_DRAIN_DELAY", "CHAT_DRAIN_SECONDS", "WS_DRAIN_GRACE")
    )
    assert pre_stop >= 1 and float(config["CHAT_DRAIN_SECONDS"]) > 0
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + drain + 1


def test_web_grace_period_covers_graceful_timeout(docs: list[Doc]) -> None:
    spec = pod(one(docs, "Deployment", "web"))
    pre_stop = spec["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    graceful = float(app_config(docs)["WEB_GRACEFUL_TIMEOUT"])
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + graceful + 1


def test_rolling_updates_never_take_a_pod_away_first(docs: list[Doc]) -> None:
    for deployment in of_kind(docs, "Deployment"):
        strategy = deployment["spec"]["strategy"]
        assert strategy["type"] == "RollingUpdate"
        assert strategy["rollingUpdate"]["maxUnavailable"] == 0, deployment["metadata"]["name"]


# --- migrations ---------------------------------------------------------------------------


def test_app_pods_wait_for_the_migrate_job(docs: list[Doc]) -> None:
    job = one(docs, "Job", "migrate")
    job_container = pod(job)["containers"][0]
    assert job_container["args"] == ["migrate"]
    assert pod(job)["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] >= 1
    for name in APP_ROLES:
        init = pod(one(docs, "Deployment", name))["initContainers"]
        assert [c["name"] for c in init] == ["wait-for-schema"]
        assert init[0]["image"] == job_container["image"]
        assert "migrate --check" in " ".join(init[0]["command"])
        assert init[0]["envFrom"] == job_container["envFrom"]


# --- nginx: one source of truth -----------------------------------------------------------


def test_nginx_configmap_is_deploy_nginx_verbatim(docs: list[Doc]) -> None:
    nginx_dir = REPO / "deploy" / "nginx"
    data = generated(docs, "ConfigMap", "nginx-config")["data"]
    expected = {p.name: p.read_text() for p in nginx_dir.glob("*.conf")}
    expected["upstreams.conf"] = (nginx_dir / "upstreams" / "k8s.conf").read_text()
    hsts = "on" if app_config(docs)["HTTPS"] == "1" and of_kind(docs, "Gateway") else "off"
    expected["hsts.conf"] = (nginx_dir / "hsts" / f"{hsts}.conf").read_text()
    if of_kind(docs, "Gateway"):  # the exposure component's TLS proxies (tests/k8s/test_tls.py)
        gateway_api = K8S / "components" / "gateway-api"
        expected["trusted-proxies.conf"] = (gateway_api / "trusted-proxies.conf").read_text()
    assert data == expected


def test_nginx_mounts_every_file_where_the_config_expects_it(docs: list[Doc]) -> None:
    spec = pod(one(docs, "Deployment", "nginx"))
    container = spec["containers"][0]
    data = generated(docs, "ConfigMap", "nginx-config")["data"]
    files = _mounted_files(container, spec["volumes"])
    args = container["args"]
    conf = args[args.index("-c") + 1]
    assert files[conf] == "nginx.conf"
    assert files["/etc/nginx/parley/upstreams.conf"] == "upstreams.conf"
    # Relative includes resolve against the main file's directory.
    conf_dir = conf.rsplit("/", 1)[0]
    for key, text in data.items():
        for include in re.findall(r"^\s*include\s+(\S+);", text, re.MULTILINE):
            path = include if include.startswith("/") else f"{conf_dir}/{include}"
            assert path in files, f"{key} includes {include}, which is not mounted"
    # pid and temp paths are relative to the prefix, which must be writable.
    prefix = args[args.index("-p") + 1].rstrip("/")
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "emptyDir" in next(v for v in spec["volumes"] if v["name"] == mounts[prefix])


def test_nginx_grace_period_covers_its_shutdown_timeout(docs: list[Doc]) -> None:
    spec = pod(one(docs, "Deployment", "nginx"))
    timeout = re.search(
        r"worker_shutdown_timeout\s+(\d+)s;", (REPO / "deploy" / "nginx" / "nginx.conf").read_text()
    )
    pre_stop = spec["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    bound = int(timeout.group(1)) if timeout else 0
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + bound + 1


def test_k8s_upstreams_point_at_the_app_services(docs: list[Doc]) -> None:
    upstreams = (REPO / "deploy" / "nginx" / "upstreams" / "k8s.conf").read_text()
    servers = set(re.findall(r"server\s+([a-z0-9.-]+):(\d+)", upstreams))
    assert servers == {(name, str(port)) for name, port in APP_ROLES.items()}
    for name, port in APP_ROLES.items():
        assert [p["port"] for p in one(docs, "Service", name)["spec"]["ports"]] == [port]


def _mounted_files(container: Doc, volumes: list[Doc]) -> dict[str, str]:
    """Path inside the container -> nginx-config key, for every mount of that ConfigMap."""
    by_name = {v["name"]: v.get("configMap", {}) for v in volumes}
    files = {}
    for mount in container["volumeMounts"]:
        source = by_name.get(mount["name"], {})
        if not source.get("name", "").startswith("nginx-config-"):
            continue
        items = {i["path"]: i["key"] for i in source.get("items", [])}
        if "subPath" in mount:
            files[mount["mountPath"]] = items.get(mount["subPath"], mount["subPath"])
        else:
            assert items, "mount nginx-config with explicit items"
            files.update({f"{mount['mountPath'].rstrip('/')}/{p}": k for p, k in items.items()})
    return files


# --- services and exposure ----------------------------------------------------------------


def test_every_service_selects_a_workload_and_its_port(docs: list[Doc]) -> None:
    for service in of_kind(docs, "Service"):
        selector = service["spec"]["selector"]
        matches = [
            w
            for w in workloads(docs)
            if _matches({"matchLabels": selector}, template(w)["metadata"]["labels"])
        ]
        assert len(matches) == 1, f"Service {service['metadata']['name']} selects {len(matches)}"
        ports = {
            (p.get("name"), p["containerPort"])
            for c in pod(matches[0])["containers"]
            for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert any(target in pair for pair in ports), (service["metadata"]["name"], target)


def test_workload_selectors_match_their_own_pods(docs: list[Doc]) -> None:
    for workload in of_kind(docs, "Deployment", "StatefulSet"):
        assert _matches(
            workload["spec"]["selector"], workload["spec"]["template"]["metadata"]["labels"]
        )
    for budget in of_kind(docs, "PodDisruptionBudget"):
        assert [
            w
            for w in workloads(docs)
            if _matches(budget["spec"]["selector"], template(w)["metadata"]["labels"])
        ]


def test_autoscalers_own_the_app_replica_counts(rendered: dict[str, list[Doc]]) -> None:
    prod = rendered["production"]
    targets = {
        h["spec"]["scaleTargetRef"]["name"] for h in of_kind(prod, "HorizontalPodAutoscaler")
    }
    assert targets == set(APP_ROLES)
    for name in APP_ROLES:
        # An applied replicas field would reset the HPA's count on every apply.
        assert "replicas" not in one(prod, "Deployment", name)["spec"]
    assert {b["metadata"]["name"] for b in of_kind(prod, "PodDisruptionBudget")} == {
        "web",
        "ws",
        "nginx",
        "pgbouncer",
    }


def test_gateway_route_reaches_nginx(rendered: dict[str, list[Doc]]) -> None:
    prod = rendered["production"]
    gateway = one(prod, "Gateway", "parley")
    listeners = {lst["name"]: lst for lst in gateway["spec"]["listeners"]}
    assert listeners["https"]["protocol"] == "HTTPS"
    assert listeners["https"]["tls"]["mode"] == "Terminate"
    nginx_port = one(prod, "Service", "nginx")["spec"]["ports"][0]["port"]
    route = one(prod, "HTTPRoute", "parley")
    assert [(p["name"], p["sectionName"]) for p in route["spec"]["parentRefs"]] == [
        ("parley", "https")
    ]
    backends = [b for rule in route["spec"]["rules"] for b in rule["backendRefs"]]
    assert backends == [{"name": "nginx", "port": nginx_port}]
    redirect = one(prod, "HTTPRoute", "parley-https-redirect")
    assert redirect["spec"]["parentRefs"][0]["sectionName"] == "http"
    assert of_kind(prod, "Ingress") == []


def test_optional_ingress_reaches_nginx(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["ingress-check"]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    ingress = one(docs, "Ingress", "parley")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "nginx", "port": {"name": "http"}}
    assert "annotations" not in ingress["metadata"]  # no controller-specific behaviour
    assert ("nginx", ("namespace", "ingress-system"), "TCP", 8080) in _flows(docs)["ingress"]


# --- network policies ---------------------------------------------------------------------

DNS = ("namespace", "kube-system", "k8s-app=kube-dns")
IN_CLUSTER = {
    ("nginx", "web", "TCP", 8000),
    ("nginx", "ws", "TCP", 8001),
    ("web", "pgbouncer", "TCP", 6432),
    ("ws", "pgbouncer", "TCP", 6432),
}
DEV_DATASTORES = {
    ("pgbouncer", "postgres", "TCP", 5432),
    ("migrate", "postgres", "TCP", 5432),
    ("backup", "postgres", "TCP", 5432),
    ("web", "redis", "TCP", 6379),
    ("ws", "redis", "TCP", 6379),
}
MANAGED = ("cidr", "192.0.2.0/24")
SCRAPER = ("namespace", "monitoring", "app.kubernetes.io/name=prometheus")
METRICS = {("web", SCRAPER, "TCP", 9100), ("ws", SCRAPER, "TCP", 9100)}
EXPECTED = {
    "dev": {
        "internal": IN_CLUSTER | DEV_DATASTORES,
        "egress": {
            (p, DNS, proto, 53)
            for p in ("nginx", "web", "ws", "migrate", "backup", "pgbouncer")
            for proto in ("UDP", "TCP")
        },
        "ingress": METRICS,
    },
    "production": {
        "internal": IN_CLUSTER,
        "egress": {
            (p, DNS, proto, 53)
            for p in ("nginx", "web", "ws", "migrate", "backup", "pgbouncer")
            for proto in ("UDP", "TCP")
        }
        | {
            ("pgbouncer", MANAGED, "TCP", 5432),
            ("web", MANAGED, "TCP", 6379),
            ("ws", MANAGED, "TCP", 6379),
            ("migrate", MANAGED, "TCP", 5432),
            ("backup", MANAGED, "TCP", 5432),
        },
        "ingress": {("nginx", ("namespace", "gateway-system"), "TCP", 8080)} | METRICS,
    },
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_allow_exactly_the_needed_flows(
    rendered: dict[str, list[Doc]],
    overlay: str,
) -> None:
    docs = rendered[overlay]
    deny = one(docs, "NetworkPolicy", "default-deny-all")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    flows = _flows(docs)
    assert flows["internal"] == EXPECTED[overlay]["internal"]
    assert flows["egress"] == EXPECTED[overlay]["egress"]
    assert flows["ingress"] == EXPECTED[overlay]["ingress"]
    # The app's ports line up with the policies: nginx reaches the Services' target ports.
    for src, dst, _, port in flows["internal"]:
        workload = next(w for w in workloads(docs) if role(w) == dst)
        assert port in {
            p["containerPort"] for c in pod(workload)["containers"] for p in c.get("ports", [])
        }, (src, dst, port)


def _matches(selector: Doc, labels: dict[str, str]) -> bool:
    if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        value, present = labels.get(expr["key"]), expr["key"] in labels
        ok = {
            "In": present and value in expr.get("values", []),
            "NotIn": not present or value not in expr.get("values", []),
            "Exists": present,
            "DoesNotExist": not present,
        }[expr["operator"]]
        if not ok:
            return False
    return True


def _peers(peer: Doc, pods: dict[str, dict[str, str]]) -> list[tuple]:
    """A NetworkPolicy peer as comparable keys: in-namespace pods, other namespaces, CIDRs."""
    if "ipBlock" in peer:
        assert "except" not in peer["ipBlock"]
        return [("cidr", peer["ipBlock"]["cidr"])]
    if "namespaceSelector" in peer:
        ns = peer["namespaceSelector"]
        assert set(ns) == {"matchLabels"} and set(ns["matchLabels"]) == {
            "kubernetes.io/metadata.name"
        }, f"namespace peer must name one namespace: {ns}"
        pod_sel = peer.get("podSelector", {}).get("matchLabels", {})
        key = ("namespace", ns["matchLabels"]["kubernetes.io/metadata.name"])
        return [key + tuple(f"{k}={v}" for k, v in sorted(pod_sel.items()))]
    selector = peer["podSelector"]
    assert selector, "an empty podSelector peer would allow every pod"
    return [("pod", name) for name, labels in pods.items() if _matches(selector, labels)]


def _flows(docs: list[Doc]) -> dict[str, set]:
    pods = {role(w): template(w)["metadata"]["labels"] for w in workloads(docs)}
    allowed: dict[str, set] = {"Ingress": set(), "Egress": set()}
    for policy in of_kind(docs, "NetworkPolicy"):
        spec = policy["spec"]
        targets = [name for name, labels in pods.items() if _matches(spec["podSelector"], labels)]
        assert targets, f"NetworkPolicy {policy['metadata']['name']} selects no pod"
        for direction in spec["policyTypes"]:
            field, peers_field = direction.lower(), "from" if direction == "Ingress" else "to"
            for rule in spec.get(field, []):
                # An empty peer or port list means "any": nothing may be open that wide.
                assert rule.get(peers_field) and rule.get("ports"), policy["metadata"]["name"]
                for peer in rule[peers_field]:
                    for key in _peers(peer, pods):
                        for port in rule["ports"]:
                            for target in targets:
                                allowed[direction].add(
                                    (target, key, port.get("protocol", "TCP"), port["port"])
                                )
    internal = {
        (src, dst[1], proto, port)
        for src, dst, proto, port in allowed["Egress"]
        if dst[0] == "pod" and (dst[1], ("pod", src), proto, port) in allowed["Ingress"]
    }
    one_sided = {(s, d[1], pr, po) for s, d, pr, po in allowed["Egress"] if d[0] == "pod"} | {
        (s[1], d, pr, po) for d, s, pr, po in allowed["Ingress"] if s[0] == "pod"
    }
    assert one_sided == internal, f"half-open flows: {one_sided - internal}"
    return {
        "internal": internal,
        "egress": {f for f in allowed["Egress"] if f[1][0] != "pod"},
        "ingress": {f for f in allowed["Ingress"] if f[1][0] != "pod"},
    }


# --- images and roles: the compose file's ---------------------------------------------------


def test_images_and_roles_match_compose(rendered: dict[str, list[Doc]]) -> None:
    if not COMPOSE.exists():
        pytest.skip("docker-compose.prod.yml is not in this tree yet")
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    app_image = _base_image_name()
    compose_roles = {}
    for name, service in services.items():
        if _repository(_interpolate(service.get("image", ""))) == app_image:
            command = service["command"]
            compose_roles[name] = command.split()[0] if isinstance(command, str) else command[0]
    assert set(compose_roles.values()) == {"web", "ws", "migrate", "pgbouncer"}
    for overlay in OVERLAYS:
        docs = rendered[overlay]
        k8s_roles = {}
        for workload in workloads(docs):
            container = pod(workload)["containers"][0]
            if _repository(container["image"]).rsplit("/", 1)[-1] == app_image:
                k8s_roles[workload["metadata"]["name"]] = container["args"][0]
        assert k8s_roles == compose_roles, overlay
    # nginx, Postgres and Redis: the compose file's default images.
    dev = rendered["dev"]
    for name in ("nginx", "postgres", "redis"):
        workload = next(w for w in workloads(dev) if w["metadata"]["name"] == name)
        assert pod(workload)["containers"][0]["image"] == _interpolate(services[name]["image"])
    # The dev overlay runs the image compose builds, under a fixed tag.
    assert (
        _repository(
            one(dev, "Deployment", "web")["spec"]["template"]["spec"]["containers"][0]["image"]
        )
        == app_image
    )


def _base_image_name() -> str:
    images = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["images"]
    return images[0]["name"]


def _interpolate(value: str) -> str:
    """Compose's ${VAR:-default} / ${VAR-default} with the variables unset."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", value)


def _repository(image: str) -> str:
    name = image.split("@", 1)[0]
    head, _, tail = name.rpartition("/")
    return f"{head}/{tail.split(':', 1)[0]}" if head else tail.split(":", 1)[0]


# --- secrets ------------------------------------------------------------------------------


def _env_file(path: Path) -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    return {k: v for k, v in pairs}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_come_from_an_ignored_file_with_a_committed_example(overlay: str) -> None:
    directory = K8S / "overlays" / overlay
    assert (directory / "secrets.env.example").is_file()
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(directory / "secrets.env")], cwd=REPO, check=False
    )
    assert ignored.returncode == 0, "secrets.env must be git-ignored"
    tracked = subprocess.run(
        ["git", "ls-files", str(K8S)], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert not [f for f in tracked if f.endswith("secrets.env")], "a real secrets.env is in git"
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert kustomization["secretGenerator"] == [{"name": "parley-secrets", "envs": ["secrets.env"]}]
    example = _env_file(directory / "secrets.env.example")
    # A forgotten placeholder must not boot: settings refuse a key under 50 characters.
    assert len(example["SECRET_KEY"]) < 50


def test_gen_secrets_fills_placeholders_consistently(tmp_path: Path) -> None:
    overlay = tmp_path / "dev"
    overlay.mkdir()
    (overlay / "secrets.env.example").write_text(
        (K8S / "overlays" / "dev" / "secrets.env.example").read_text()
    )
    script = [sys.executable, str(K8S / "gen_secrets.py"), str(overlay)]
    subprocess.run(script, check=True, capture_output=True, timeout=30)
    env = _env_file(overlay / "secrets.env")
    assert not [k for k, v in env.items() if "generate-me" in v]
    assert len(env["SECRET_KEY"]) >= 50
    assert f":{env['POSTGRES_PASSWORD']}@" in env["DATABASE_URL"]
    assert env["SECRET_KEY"] != env["POSTGRES_PASSWORD"]
    before = (overlay / "secrets.env").read_text()
    again = subprocess.run(script, capture_output=True, text=True, timeout=30, check=False)
    assert again.returncode == 1 and "exists" in again.stderr
    assert (overlay / "secrets.env").read_text() == before


def test_dev_urls_point_at_the_in_cluster_datastores(rendered: dict[str, list[Doc]]) -> None:
    dev = rendered["dev"]
    env = _env_file(K8S / "overlays" / "dev" / "secrets.env.example")
    redis = one(dev, "StatefulSet", "redis")
    assert one(dev, "Service", redis["spec"]["serviceName"])["spec"]["clusterIP"] == "None"
    for url in map(urlsplit, env["REDIS_URL"].split(",")):
        # A StatefulSet pod's stable name: <name>-<ordinal>.<headless service>.
        pod_name, service = url.hostname.split(".", 1)
        ordinal = int(pod_name.removeprefix("redis-"))
        assert service == redis["spec"]["serviceName"]
        assert ordinal < redis["spec"]["replicas"] and url.port == 6379
    database = urlsplit(env["DATABASE_URL"])
    postgres = pod(one(dev, "StatefulSet", "postgres"))["containers"][0]
    postgres_env = {e["name"]: e.get("value") for e in postgres["env"]}
    one(dev, "Service", database.hostname)
    assert database.port == 5432 and database.username == postgres_env["POSTGRES_USER"]
    assert database.path == f"/{postgres_env['POSTGRES_DB']}"
    assert database.password == env["POSTGRES_PASSWORD"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_web_and_ws_export_metrics_only_to_the_scraper(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    for workload in workloads(docs):
        if role(workload) not in ("web", "ws"):
            continue
        annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/scrape") == "true", role(workload)
        port = int(annotations["prometheus.io/port"])
        ports = {
            p["containerPort"] for c in pod(workload)["containers"] for p in c.get("ports", [])
        }
        assert port in ports
        assert (role(workload), SCRAPER, "TCP", port) in _flows(docs)["ingress"]
    # nginx, the only public entry, has no route to the metrics port
    assert not any(dst in ("web", "ws") and p == 9100 for _, dst, _, p in _flows(docs)["internal"])


# --- backups ----------------------------------------------------------------------------------


def test_backup_cronjob_runs_the_compose_backup_onto_its_claim(docs: list[Doc]) -> None:
    """The CronJob (deploy/backup) runs what `make backup` runs: the same image, command and
    script (its ConfigMap is deploy/backup/pg-backup.sh verbatim), one at a time, into the
    PersistentVolumeClaim, with the retention docs/operations.md documents."""
    cron = one(docs, "CronJob", "pg-backup")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    spec = pod(cron)
    assert spec["restartPolicy"] == "Never"
    (container,) = spec["containers"]
    service = yaml.safe_load(COMPOSE.read_text())["services"]["backup"]
    assert container["image"] == _interpolate(service["image"])
    assert container["command"] == service["command"]
    env = {e["name"]: e for e in container["env"]}
    assert env["BACKUP_KEEP_DAYS"]["value"] == _interpolate(
        service["environment"]["BACKUP_KEEP_DAYS"]
    )
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"] == "DATABASE_URL"
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    claim = volumes[mounts[container["command"][-1]]]["persistentVolumeClaim"]["claimName"]
    assert one(docs, "PersistentVolumeClaim", claim)
    script_dir, script_name = container["command"][1].rsplit("/", 1)
    config = volumes[mounts[script_dir]]["configMap"]["name"]
    data = generated(docs, "ConfigMap", "pg-backup")
    assert config == data["metadata"]["name"]
    assert data["data"][script_name] == (REPO / "deploy/backup/pg-backup.sh").read_text()
    host_script = next(v for v in service["volumes"] if v.startswith("./deploy/backup/"))
    assert host_script.split(":")[1] == container["command"][1]


# --- database connection budget -------------------------------------------------------------

HEADROOM = 10  # psql sessions, monitoring, an admin's shell


def cpus(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def env_of(container: Doc, config: dict[str, str]) -> dict[str, str]:
    """The container's environment as the app sees it: the ConfigMap, then its own env."""
    return {**config, **{e["name"]: e["value"] for e in container.get("env", []) if "value" in e}}


def app_clients(docs: list[Doc]) -> tuple[int, list[str]]:
    """PgBouncer's clients at the HPAs' maxima: for web and ws, maxReplicas x processes x
    DB_POOL_MAX_SIZE (ws: + CHAT_DB_STORE_CONNECTIONS), where web's processes are
    WEB_WORKERS or its CPU limit rounded up (parley.cpus) and ws runs one."""
    config = app_config(docs)
    hpa_max = {
        h["spec"]["scaleTargetRef"]["name"]: h["spec"]["maxReplicas"]
        for h in of_kind(docs, "HorizontalPodAutoscaler")
    }
    total, lines = 0, []
    for name in ("web", "ws"):
        deployment = one(docs, "Deployment", name)
        container = next(c for c in pod(deployment)["containers"] if c["name"] == name)
        env = env_of(container, config)
        replicas = hpa_max.get(name, deployment["spec"].get("replicas", 1))
        if name == "web":
            limit = cpus(container["resources"]["limits"]["cpu"])
            processes = int(env.get("WEB_WORKERS") or math.ceil(limit))
        else:
            processes = 1
        pool = int(env.get("DB_POOL_MAX_SIZE", "4"))
        if name == "ws":  # and the event loop's own, for sends (parley.loopdb)
            pool += int(env.get("CHAT_DB_STORE_CONNECTIONS", "2"))
        total += replicas * processes * pool
        lines.append(f"{name}: {replicas} x {processes} x {pool}")
    return total, lines


def server_connections(docs: list[Doc]) -> tuple[int, list[str]]:
    """Postgres's connections at any scale: every PgBouncer pod's pool, a rollout's extra pod
    included, the migrate Job's pool, one for the backup and the headroom for people."""
    config = app_config(docs)
    bouncer = one(docs, "Deployment", "pgbouncer")
    pods = (
        bouncer["spec"].get("replicas", 1)
        + bouncer["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
    )
    pool = int(config["PGBOUNCER_POOL_SIZE"])
    migrate = int(config.get("DB_POOL_MAX_SIZE", "4"))
    backup = 1 if of_kind(docs, "CronJob") else 0
    lines = [f"pgbouncer: {pods} x {pool}", f"migrate: {migrate}", f"backup: {backup}"]
    return pods * pool + migrate + backup + HEADROOM, lines


def test_postgres_connections_fit_max_connections_at_any_scale(docs: list[Doc]) -> None:
    """Only PgBouncer, the migration and the backup hold server connections: the HPAs' maxima
    do not enter Postgres's budget (before PgBouncer, the production maxima were capped at 12
    pods each and the event-loop stores turned off to fit 100)."""
    config = app_config(docs)
    budget, lines = server_connections(docs)
    limit = int(config["DB_MAX_CONNECTIONS"])
    postgres = [d for d in of_kind(docs, "StatefulSet") if d["metadata"]["name"] == "postgres"]
    if postgres:  # the datastores component: its server's own setting (default 100)
        args = " ".join(pod(postgres[0])["containers"][0].get("args", []))
        server = re.search(r"max_connections=(\d+)", args)
        assert (int(server.group(1)) if server else 100) == limit
    assert budget <= limit, f"{budget} connections ({', '.join(lines)}) > {limit}"


def test_one_pgbouncer_takes_every_client_at_the_hpa_maxima(docs: list[Doc]) -> None:
    """On a 16-core node a web pod used to start 16 workers (os.cpu_count() ignores the CPU
    limit): clients are still counted per process. With one PgBouncer pod drained, the
    other must accept every client of every web and ws process at their maxima."""
    clients, lines = app_clients(docs)
    limit = int(read_policy()["max_client_conn"])
    assert clients <= limit, f"{clients} clients ({', '.join(lines)}) > {limit}"


def test_web_and_ws_reach_postgres_only_through_pgbouncer(
    rendered: dict[str, list[Doc]],
) -> None:
    """Every web and ws container (their schema gates too) takes POOLED_DATABASE_URL, whose
    example in each overlay is DATABASE_URL's user, password and database at the pgbouncer
    Service; PgBouncer, the migration and the backup take DATABASE_URL, the server."""
    for overlay in OVERLAYS:
        docs = rendered[overlay]
        service = one(docs, "Service", "pgbouncer")
        for name in APP_ROLES:
            spec = pod(one(docs, "Deployment", name))
            for container in spec["initContainers"] + spec["containers"]:
                env = {e["name"]: e for e in container.get("env", [])}
                ref = env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
                assert ref["key"] == "POOLED_DATABASE_URL", (overlay, name, container["name"])
        bouncer = pod(one(docs, "Deployment", "pgbouncer"))["containers"][0]
        env = {e["name"]: e for e in bouncer["env"]}
        assert env["PGBOUNCER_SERVER_URL"]["valueFrom"]["secretKeyRef"]["key"] == "DATABASE_URL"
        assert int(env["PGBOUNCER_PORT"]["value"]) == service["spec"]["ports"][0]["port"]
        example = dict(
            line.split("=", 1)
            for line in (K8S / "overlays" / overlay / "secrets.env.example")
            .read_text()
            .splitlines()
            if line and not line.startswith("#")
        )
        server, pooled = urlsplit(example["DATABASE_URL"]), urlsplit(example["POOLED_DATABASE_URL"])
        assert (pooled.username, pooled.password, pooled.path) == (
            server.username,
            server.password,
            server.path,
        ), overlay
        assert (pooled.hostname, pooled.port) == (service["metadata"]["name"], pooled.port)
        assert pooled.port == int(env["PGBOUNCER_PORT"]["value"]), overlay
        assert "sslmode" not in pooled.query, f"{overlay}: PgBouncer's client side has no TLS"


def test_pgbouncer_runs_the_shared_policy_verbatim(docs: list[Doc]) -> None:
    data = generated(docs, "ConfigMap", "pgbouncer-policy")
    policy = REPO / "deploy" / "pgbouncer" / "pgbouncer.ini"
    assert data["data"] == {"pgbouncer.ini": policy.read_text()}
    spec = pod(one(docs, "Deployment", "pgbouncer"))
    volumes = {v["name"]: v for v in spec["volumes"]}
    (container,) = spec["containers"]
    assert container["args"] == ["pgbouncer"]
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    # The path the image role reads (deploy/pgbouncer/config.py IMAGE_POLICY).
    assert mounts["/etc/parley/pgbouncer"]["configMap"]["name"] == data["metadata"]["name"]
    assert "emptyDir" in mounts["/tmp"]  # the rendered file, on a read-only root


def test_production_ws_maximum_is_the_capacity_model_s_plan_with_stores_on_the_loop(
    rendered: dict[str, list[Doc]],
) -> None:
    """scaling.yaml's ws maximum is `make capacity S=100000 R=10000`; the event-loop stores
    stay on (CHAT_DB_STORE_CONNECTIONS at its default), PgBouncer pools them."""
    from loadtest import capacity

    prod = rendered["production"]
    hpa = {h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind(prod, "HorizontalPodAutoscaler")}
    assert hpa["ws"]["spec"]["maxReplicas"] == capacity.plan(100_000, 10_000).count("ws pods")
    config = app_config(prod)
    ws = pod(one(prod, "Deployment", "ws"))["containers"][0]
    assert "CHAT_DB_STORE_CONNECTIONS" not in env_of(ws, config)
