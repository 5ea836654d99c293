"""TLS in Kubernetes (issue "Operations"): TLS ends at the Gateway (or Ingress), which sends
plain HTTP to nginx. The app must still learn that the client used https, and no client may
forge it: nginx believes X-Forwarded-Proto only from the exposure proxies' addresses
(trusted-proxies.conf, from the exposure component) and overwrites everyone else's. Checked
on the rendered ConfigMaps (with mutations the check must catch) and with a real nginx
running the rendered production config. The optional cert-manager Certificate and the HSTS
component render and fit the Gateway."""

from __future__ import annotations

import ipaddress
import re
import shutil
from pathlib import Path

import kubernetes_validate
import pytest

from tests.k8s.render import K8S_VERSION, Doc, build, stage
from tests.k8s.test_manifests import LABELS, generated, of_kind, one
from tests.k8s.test_nginx_pod import run_pod

# The production overlay with one of its commented-out optional components switched on,
# as its comments tell a user to.
OPTIONAL = {
    "cert-manager-check": "../../components/cert-manager",
    "ingress-check": "../../components/ingress",
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Doc]]:
    staged = stage(tmp_path_factory.mktemp("k8s-tls"))
    overlays = staged / "k8s" / "overlays"
    production = (overlays / "production" / "kustomization.yaml").read_text()
    for name, component in OPTIONAL.items():
        shutil.copytree(overlays / "production", overlays / name)
        line = f"  # - {component}\n"
        assert production.count(line) == 1, f"production no longer offers {component}"
        text = production.replace(line, f"  - {component}\n")
        if name == "ingress-check":  # instead of the Gateway, not with it
            text = text.replace("  - ../../components/gateway-api\n", "")
        (overlays / name / "kustomization.yaml").write_text(text)
    return {name: build(overlays / name) for name in ("dev", "production", *OPTIONAL)}


def nginx_files(docs: list[Doc]) -> dict[str, str]:
    return generated(docs, "ConfigMap", "nginx-config")["data"]


def _code(text: str) -> str:
    return re.sub(r"#.*", "", text)


def _block(code: str, head: str) -> list[str] | None:
    """The statements of the `head { ... }` block (no nesting in these), or None."""
    found = re.search(re.escape(head) + r"\s*\{([^}]*)\}", code)
    if not found:
        return None
    return [" ".join(s.split()) for s in found.group(1).split(";") if s.strip()]


def trusted_lines(files: dict[str, str]) -> list[str]:
    """The geo entries of trusted-proxies.conf, e.g. ["10.0.0.0/8 1"]."""
    code = _code(files["trusted-proxies.conf"])
    return [" ".join(s.split()) for s in code.split(";") if s.strip()]


# Where pods, nodes and in-cluster proxies live: RFC 1918, shared address space, IPv6 ULA.
CLUSTER_RANGES = [
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
]


def forwarded_proto_problems(files: dict[str, str]) -> list[str]:
    """Everything that would let a client choose the X-Forwarded-Proto the app sees."""
    problems = []
    code = _code(files["parley.conf"])
    sets = re.findall(r"proxy_set_header\s+X-Forwarded-Proto\s+([^;]+);", code, re.IGNORECASE)
    if sets != ["$parley_forwarded_proto"]:
        problems.append(f"X-Forwarded-Proto is set to {sets}, not once to the mapped value")
    geo = _block(code, "geo $parley_trusted_proxy")
    if geo is None or sorted(geo) != ["default 0", "include parley/trusted-proxies.conf"]:
        problems.append(f"the trusted-proxy geo must default to 0 and list the file: {geo}")
    source = '"$parley_trusted_proxy:$http_x_forwarded_proto"'
    mapping = _block(code, f"map {source} $parley_forwarded_proto")
    if mapping is None or sorted(mapping) != sorted(
        ['"1:https" https', '"1:http" http', "default $scheme"]
    ):
        problems.append(f"the forwarded-proto map must fall back to $scheme: {mapping}")
    if code.count("$http_x_forwarded_proto") != 1:
        problems.append("the client's X-Forwarded-Proto is read outside the map")
    if "map $parley_forwarded_proto $parley_hsts" not in _code(files["hsts.conf"]):
        problems.append("HSTS must follow the mapped scheme")
    for line in trusted_lines(files):
        cidr, _, value = line.partition(" ")
        try:
            network = ipaddress.ip_network(cidr)
        except ValueError:
            problems.append(f"trusted-proxies.conf: not a network: {line!r}")
            continue
        if value != "1" or not any(
            network.version == net.version and network.subnet_of(net) for net in CLUSTER_RANGES
        ):
            problems.append(f"trusted-proxies.conf: clients could send from {line!r}")
    return problems


@pytest.mark.parametrize("overlay", ["dev", "production", "ingress-check"])
def test_nginx_trusts_the_forwarded_scheme_of_the_tls_proxies_only(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    files = nginx_files(docs)
    assert forwarded_proto_problems(files) == []
    exposure = of_kind(docs, "Gateway", "Ingress")
    # No exposure (dev: port-forward): nginx trusts nobody; behind the Gateway or Ingress,
    # only the proxies' private ranges, and only they may reach nginx at all.
    assert bool(trusted_lines(files)) == bool(exposure)
    if exposure:
        policies = [
            p
            for p in of_kind(docs, "NetworkPolicy")
            if p["metadata"]["name"] in ("nginx-from-gateway", "nginx-from-ingress")
        ]
        assert len(policies) == 1
        sources = [src for rule in policies[0]["spec"]["ingress"] for src in rule["from"]]
        assert sources and all(set(s) == {"namespaceSelector"} for s in sources), sources


MUTATIONS = {
    "header from the client": (
        "parley.conf",
        "X-Forwarded-Proto $parley_forwarded_proto",
        "X-Forwarded-Proto $http_x_forwarded_proto",
    ),
    "everyone trusted": ("parley.conf", "default 0;\n    include", "default 1;\n    include"),
    "fallback to the header": (
        "parley.conf",
        "default $scheme;",
        "default $http_x_forwarded_proto;",
    ),
    "a second header": (
        "parley.conf",
        "proxy_set_header X-Forwarded-Host",
        "proxy_set_header X-Forwarded-Proto $scheme;\n    proxy_set_header X-Forwarded-Host",
    ),
    "HSTS from the header": ("hsts.conf", "$parley_forwarded_proto", "$http_x_forwarded_proto"),
    "the internet trusted": ("trusted-proxies.conf", "10.0.0.0/8 1;", "0.0.0.0/0 1;"),
    "a public range trusted": ("trusted-proxies.conf", "10.0.0.0/8 1;", "34.0.0.0/8 1;"),
    "not a network": ("trusted-proxies.conf", "10.0.0.0/8 1;", "gateway 1;"),
}


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_the_forwarded_scheme_check_catches_each_weakening(
    rendered: dict[str, list[Doc]], mutation: str
) -> None:
    key, old, new = MUTATIONS[mutation]
    files = dict(nginx_files(rendered["production"]))
    assert old in files[key], f"mutation {mutation!r} no longer applies"
    files[key] = files[key].replace(old, new, 1)
    assert forwarded_proto_problems(files), f"{mutation!r} went unnoticed"


# The production config in a real nginx: 10.20.30.40 stands for the Gateway's proxy (inside
# the trusted ranges), 203.0.113.7 for a client that reached nginx directly. An upstream on
# web:8000 echoes the X-Forwarded-Proto that nginx sent it.
ECHO_PROBE = r"""
import http.client, http.server, threading
class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (self.headers.get("X-Forwarded-Proto") or "").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 8000), Echo)
threading.Thread(target=server.serve_forever, daemon=True).start()
seen = {}
for source in ("10.20.30.40", "203.0.113.7"):
    for claimed in ("https", "http", "HTTPS, http", None):
        conn = http.client.HTTPConnection(source, PORT, timeout=5, source_address=(source, 0))
        conn.request("GET", "/", headers={"X-Forwarded-Proto": claimed} if claimed else {})
        response = conn.getresponse()
        seen[f"{source} {claimed}"] = response.read().decode()
        conn.close()
result["seen"] = seen
"""


@pytest.mark.parametrize(
    ("overlay", "from_gateway"),
    [
        ("production", {"https": "https", "http": "http"}),
        ("dev", {"https": "http", "http": "http"}),
    ],
)
def test_real_nginx_passes_the_gateways_scheme_and_overwrites_a_clients(
    tmp_path: Path, overlay: str, from_gateway: dict[str, str]
) -> None:
    probe = ECHO_PROBE.replace("PORT", "8080")
    result, spec = run_pod(tmp_path, overlay, probe, ("10.20.30.40/32", "203.0.113.7/32"))
    assert spec["containers"][0]["ports"][0]["containerPort"] == 8080
    seen = result["seen"]
    assert seen["10.20.30.40 https"] == from_gateway["https"]
    assert seen["10.20.30.40 http"] == from_gateway["http"]
    # Nothing or an unknown value from the gateway: nginx's own scheme.
    assert seen["10.20.30.40 None"] == "http"
    assert seen["10.20.30.40 HTTPS, http"] == "http"
    # A client reaching nginx directly never chooses the scheme.
    for claimed in ("https", "http", "HTTPS, http", "None"):
        assert seen[f"203.0.113.7 {claimed}"] == "http", claimed


def test_hsts_is_on_in_production_and_off_in_dev(rendered: dict[str, list[Doc]]) -> None:
    hsts_dir = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "hsts"
    assert nginx_files(rendered["dev"])["hsts.conf"] == (hsts_dir / "off.conf").read_text()
    on = nginx_files(rendered["production"])["hsts.conf"]
    assert on == (hsts_dir / "on.conf").read_text()
    assert re.search(r'https\s+"max-age=\d{7,}; includeSubDomains";', on)


CERTIFICATE_SPEC_FIELDS = {  # cert-manager.io/v1 Certificate spec fields used here
    "secretName",
    "dnsNames",
    "issuerRef",
    "privateKey",
    "renewBefore",
    "duration",
    "commonName",
}


def test_cert_manager_certificate_feeds_the_gateway(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["cert-manager-check"]
    certificate = one(docs, "Certificate", "parley-tls")
    assert certificate["apiVersion"] == "cert-manager.io/v1"
    assert certificate["metadata"]["namespace"] == "parley"
    assert all(k in certificate["metadata"]["labels"] for k in LABELS)
    spec = certificate["spec"]
    assert set(spec) <= CERTIFICATE_SPEC_FIELDS, set(spec) - CERTIFICATE_SPEC_FIELDS
    issuer = spec["issuerRef"]
    assert issuer["group"] == "cert-manager.io" and issuer["kind"] in ("Issuer", "ClusterIssuer")
    assert issuer["name"]
    assert spec["privateKey"]["algorithm"] in ("RSA", "ECDSA", "Ed25519")
    assert re.fullmatch(r"\d+h", spec["renewBefore"])
    # The Secret it writes is the one the https listener serves, for the same host names.
    gateway = one(docs, "Gateway", "parley")
    https = next(lst for lst in gateway["spec"]["listeners"] if lst["protocol"] == "HTTPS")
    assert [ref["name"] for ref in https["tls"]["certificateRefs"]] == [spec["secretName"]]
    assert spec["dnsNames"] == [https["hostname"]]
    route = one(docs, "HTTPRoute", "parley")
    assert set(route["spec"]["hostnames"]) <= set(spec["dnsNames"])
    # Everything else is production unchanged and still valid.
    for doc in docs:
        if doc["kind"] not in ("Certificate", "Gateway", "HTTPRoute"):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} - {
        (d["kind"], d["metadata"]["name"]) for d in rendered["production"]
    } == {("Certificate", "parley-tls")}
