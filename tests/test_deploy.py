"""The Kubernetes deployment, validated offline.

Every overlay renders with ``kubectl kustomize``; core objects pass ``kubernetes-validate``
strictly (Kubernetes 1.30); custom resources (Strimzi, cert-manager, ServiceMonitor) pass
the trimmed CRD schemas in ``deploy/schemas/``; and the objects refer to each other
correctly (accounts, users, certificates, topics, ports, stages). The generated part of
the tree must be what the code renders now, so topics and ACLs cannot drift.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator

import jsonschema
import kubernetes_validate
import pytest
import yaml

from deploy.gen import heating, vault
from deploy.gen.__main__ import stale
from deploy.gen.common import PROBE_PORT, WEB_PORT
from deploy.gen.render import render as render_now
from deploy.gen.services import earlier
from heater import catalogue
from homekit.config import BridgeSettings
from streams import topics, topology
from streams.heating.k8s import CONTAINER as HEATING_JOB, TLS_DIR, JobTemplate
from streams.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
OVERLAYS = sorted(p.name for p in (DEPLOY / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
TARGETS = ["base", *(f"overlays/{name}" for name in OVERLAYS)]
K8S_VERSION = "1.30"
CUSTOM_GROUPS = ("kafka.strimzi.io", "cert-manager.io", "monitoring.coreos.com")
#: Secrets the manifests mount but do not declare: made by cert-manager, Strimzi's operators.
STRIMZI_CA_SECRET = "heater-kafka-cluster-ca-cert"

Doc = dict[str, Any]

#: The rendering is pure: once per test session.
render = functools.lru_cache(maxsize=1)(render_now)


@pytest.fixture(scope="module")
def validate_core() -> Iterator[Callable[[Doc], None]]:
    """``kubernetes_validate.validate`` reading its (large) schema files once, not once per object."""
    utils = kubernetes_validate.utils
    original = utils.schema_contents
    utils.schema_contents = functools.lru_cache(maxsize=None)(original)
    seen: set[str] = set()

    def validate(doc: Doc) -> None:
        key = json.dumps(doc, sort_keys=True)
        if key not in seen:  # the overlays repeat most of the base
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            seen.add(key)

    yield validate
    utils.schema_contents = original


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl is not installed: `kubectl kustomize` renders the overlays")
    return path


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Doc]]:
    """Every target rendered once: target → its objects."""
    exe = kubectl()
    out = {}
    for target in TARGETS:
        done = subprocess.run([exe, "kustomize", str(DEPLOY / target)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"kubectl kustomize {target} failed:\n{done.stderr}"
        out[target] = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    return out


def of(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def by_name(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in of(docs, kind)}


#: What the Downward API gives a pod on the Pi (an example node and pod).
NODE_ADDRESS, POD_NAME = "192.0.2.7", "homekit-7d9c5-x2k4q"
FIELDS = {"status.hostIP": NODE_ADDRESS, "metadata.name": POD_NAME}


def container_env(docs: list[Doc], container: Doc) -> dict[str, str]:
    """A container's environment as the kubelet builds it: its ConfigMaps, then ``env`` (Downward API from FIELDS)."""
    config_maps = by_name(docs, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]]["data"])
    for var in container.get("env", []):
        env[var["name"]] = var["value"] if "value" in var else FIELDS[var["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def worker_env(docs: list[Doc], deployment: str) -> dict[str, str]:
    """The environment of a Deployment's worker container."""
    [worker] = by_name(docs, "Deployment")[deployment]["spec"]["template"]["spec"]["containers"]
    return container_env(docs, worker)


def platform_containers(docs: list[Doc]) -> Iterator[tuple[str, Doc, Doc]]:
    """(owner, pod spec, container) for every service's worker and the heating job: the processes that serve an API."""
    for owner, spec in pod_specs(docs):
        for container in spec["containers"]:
            if container["name"] in ("worker", HEATING_JOB):
                yield owner, spec, container


def pod_specs(docs: list[Doc]) -> Iterator[tuple[str, Doc]]:
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            yield d["metadata"]["name"], d["spec"]["template"]["spec"]
        elif d["kind"] == "CronJob":
            yield d["metadata"]["name"], d["spec"]["jobTemplate"]["spec"]["template"]["spec"]


# -- the generated part is current --------------------------------------------------------


def test_generated_manifests_are_what_the_code_renders() -> None:
    assert stale(render()) == [], "run `python -m deploy.gen` and commit the result"


# -- schemas ------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_core_objects_validate_strictly(rendered: dict[str, list[Doc]], validate_core: Any, target: str) -> None:
    core = [d for d in rendered[target] if d["apiVersion"].split("/")[0] not in CUSTOM_GROUPS]
    assert core
    for doc in core:
        try:
            validate_core(doc)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")


def _schema(doc: Doc) -> Doc:
    group, version = doc["apiVersion"].split("/")
    path = DEPLOY / "schemas" / f"{group}_{version}_{doc['kind'].lower()}.json"
    assert path.is_file(), f"no schema for {doc['apiVersion']} {doc['kind']} in deploy/schemas/"
    return json.loads(path.read_text())


@pytest.mark.parametrize("target", TARGETS)
def test_custom_resources_match_their_crd_schemas(rendered: dict[str, list[Doc]], target: str) -> None:
    custom = [d for d in rendered[target] if d["apiVersion"].split("/")[0] in CUSTOM_GROUPS]
    assert {d["kind"] for d in custom} >= {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser", "Issuer", "Certificate", "ServiceMonitor"}
    for doc in custom:
        errors = list(jsonschema.Draft202012Validator(_schema(doc)).iter_errors(doc))
        assert not errors, f"{doc['kind']}/{doc['metadata']['name']}: " + "; ".join(
            f"{e.message} at {list(e.absolute_path)}" for e in errors)


def test_the_schemas_are_strict_where_the_crds_are() -> None:
    """A misspelt field in a custom resource fails (the schemas would be no check otherwise)."""
    user = yaml.safe_load(render()["base/generated/kafka-users.yaml"].split("---\n")[0].split("\n", 1)[1])
    user["spec"]["authorization"]["acls"][0]["operation"] = "Raed"
    assert list(jsonschema.Draft202012Validator(_schema(user)).iter_errors(user))
    user = yaml.safe_load(render()["base/generated/kafka-users.yaml"].split("---\n")[0].split("\n", 1)[1])
    user["spec"]["authentification"] = {"type": "tls"}
    assert list(jsonschema.Draft202012Validator(_schema(user)).iter_errors(user))


# -- cross-references ---------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_one_deployment_per_service_running_its_worker(rendered: dict[str, list[Doc]], target: str) -> None:
    deployments = by_name(rendered[target], "Deployment")
    expected = {c.name for c in catalogue.COMPONENTS if c.kind == "service"}
    assert set(deployments) == expected
    for name, d in deployments.items():
        [worker] = d["spec"]["template"]["spec"]["containers"]
        assert worker["command"] == ["heater", "worker", name]
        assert d["spec"]["replicas"] == 1 and d["spec"]["strategy"]["type"] == "Recreate"


@pytest.mark.parametrize("target", TARGETS)
def test_every_service_account_has_a_kafka_user_and_a_certificate(rendered: dict[str, list[Doc]], target: str) -> None:
    docs = rendered[target]
    accounts = {spec["serviceAccountName"] for _, spec in pod_specs(docs) if spec["serviceAccountName"] != "vault"}
    assert accounts == set(topology.BY_NAME)
    users, certs = by_name(docs, "KafkaUser"), by_name(docs, "Certificate")
    assert accounts <= set(by_name(docs, "ServiceAccount"))
    for account in accounts:
        assert account in users, f"no KafkaUser for {account}"
        assert certs[account]["spec"]["commonName"] == account and certs[account]["spec"]["secretName"] == f"{account}-tls"
        assert {"server auth", "client auth"} <= set(certs[account]["spec"]["usages"])
    issuers = set(by_name(docs, "Issuer"))
    assert all(c["spec"]["issuerRef"]["name"] in issuers for c in certs.values())


def hours(duration: str) -> float:
    """A cert-manager duration (Go's ``time.ParseDuration``: h, m, s) in hours."""
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert parts and duration, duration
    h, m, sec = (int(x or 0) for x in parts.groups())
    return h + m / 60 + sec / 3600


@pytest.mark.parametrize("target", TARGETS)
def test_platform_certificates_are_client_certificates_and_short_lived(rendered: dict[str, list[Doc]], target: str) -> None:
    """Every certificate but the CA's and Vault's (a server only) identifies a client; with no CRL from cert-manager's
    CA issuer, a stolen key is usable until its certificate expires: at most a day, renewed well before."""
    certs = [c for c in of(rendered[target], "Certificate") if not c["spec"].get("isCA") and c["metadata"]["name"] != "vault"]
    assert {"operator", HEATING_JOB} <= {c["metadata"]["name"] for c in certs}
    for cert in certs:
        name, spec = cert["metadata"]["name"], cert["spec"]
        assert "client auth" in spec["usages"], name
        assert hours(spec["duration"]) <= 24 and 0 < hours(spec["renewBefore"]) <= hours(spec["duration"]) / 2, name
        assert spec["privateKey"]["rotationPolicy"] == "Always"  # a new key at every renewal


URL = re.compile(r"\b(?P<scheme>[a-z]+)://(?P<host>[a-z0-9.-]+)(?::(?P<port>\d+))?(?P<path>/[^\s\"']*)?")


def strings(value: Any) -> Iterator[str]:
    """Every string inside a manifest object."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


@pytest.mark.parametrize("target", TARGETS)
def test_services_call_each_other_over_mtls_only(rendered: dict[str, list[Doc]], target: str) -> None:
    """A URL to a platform service is https/wss on its API port, to a name its certificate covers; plain http only
    to its probe port's health and metrics paths. Vault and Kafka are not platform services (their own TLS)."""
    docs = rendered[target]
    services, certs = by_name(docs, "Service"), by_name(docs, "Certificate")
    found: dict[str, int] = defaultdict(int)
    for url in (m for doc in docs for text in strings(doc) for m in URL.finditer(text)):
        service = url["host"].split(".")[0]
        if service not in by_name(docs, "Deployment"):
            continue
        ports = {p["name"]: p["port"] for p in services[service]["spec"]["ports"]}
        port = int(url["port"] or 0)
        if url["scheme"] in ("http", "ws"):
            assert (port, url["path"]) in {(ports["probe"], p) for p in ("/healthz", "/readyz", "/metrics")}, url[0]
        else:
            assert url["scheme"] in ("https", "wss") and port == ports["https"], url[0]
            assert url["host"] in certs[service]["spec"]["dnsNames"], f"{url[0]}: {service}'s certificate does not name it"
        found[url["scheme"]] += 1
    assert found["wss"] and found["http"], "the bridge's feed and the start order's waits are in the manifests"


@pytest.mark.parametrize("target", TARGETS)
def test_every_topic_of_the_code_has_a_kafka_topic_and_nothing_else_does(rendered: dict[str, list[Doc]], target: str) -> None:
    declared = {t["spec"]["topicName"]: t["spec"] for t in of(rendered[target], "KafkaTopic")}
    assert set(declared) == {t.name for t in topics.ALL_TOPICS} | set(topology.internal_topics())
    for spec in topics.ALL_TOPICS:
        assert declared[spec.name]["partitions"] == spec.partitions
        assert declared[spec.name]["config"] == spec.config
    for name in topology.internal_topics():
        assert declared[name]["config"]["cleanup.policy"] == "compact"


@pytest.mark.parametrize("target", TARGETS)
def test_kafka_users_may_use_exactly_their_topics(rendered: dict[str, list[Doc]], target: str) -> None:
    docs = rendered[target]
    existing = {t["spec"]["topicName"] for t in of(docs, "KafkaTopic")}
    for user in of(docs, "KafkaUser"):
        service = topology.BY_NAME[user["metadata"]["name"]]
        rights: dict[str, set[str]] = defaultdict(set)
        groups = []
        for acl in user["spec"]["authorization"]["acls"]:
            resource = acl["resource"]
            assert resource["patternType"] == "literal", "no wildcard or prefix grants"
            if resource["type"] == "group":
                groups.append(resource["name"])
                continue
            assert resource["type"] == "topic" and resource["name"] in existing, resource
            rights[resource["name"]] |= set(acl["operations"])
        assert {t for t, ops in rights.items() if "Read" in ops} == service.reads
        assert {t for t, ops in rights.items() if "Write" in ops} == service.writes
        assert {t for t, ops in rights.items() if "Create" in ops} == set(service.changelogs)
        assert groups == ([service.group] if service.group else [])
        assert user["spec"]["authentication"]["type"] == "tls"


@pytest.mark.parametrize("target", TARGETS)
def test_probes_use_the_health_endpoints_on_the_plain_probe_port(rendered: dict[str, list[Doc]], target: str) -> None:
    """The kubelet has no client certificate: a probe on the API port would fail the TLS handshake and kill the pod."""
    for name, d in by_name(rendered[target], "Deployment").items():
        [worker] = d["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert worker[probe]["httpGet"]["port"] == "probe", (name, probe)
            assert worker[probe]["httpGet"].get("scheme", "HTTP") == "HTTP", (name, probe)
        # A halted service answers /healthz (alive) and 503 on /readyz: liveness must not look at readiness.
        assert worker["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert worker["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert ports["probe"] != ports["https"], name


@pytest.mark.parametrize("target", TARGETS)
def test_pods_on_the_fatal_path_weigh_more_on_a_busy_cpu(rendered: dict[str, list[Doc]], target: str) -> None:
    """Between pods the CPU goes by requests, not nice values: the edge adapters request the most,
    the deciders of every reading less, the services off the FATAL path the least; none is capped."""
    def millicores(name: str) -> int:
        [worker] = deployments[name]["spec"]["template"]["spec"]["containers"]
        assert "cpu" not in worker["resources"].get("limits", {}), f"{name}: a CPU limit throttles"
        cpu = worker["resources"]["requests"]["cpu"]
        return int(cpu[:-1]) if cpu.endswith("m") else int(float(cpu) * 1000)

    deployments = by_name(rendered[target], "Deployment")
    edge = {millicores(name) for name in ("can", "i2c")}
    deciders = {millicores(name) for name in ("bank", "disaster")}
    off_path = {millicores(name) for name in ("config", "secrets", "registry", "exceptions", "alarms", "homekit")}
    assert min(edge) > max(deciders) and min(deciders) > max(off_path), (edge, deciders, off_path)


@pytest.mark.parametrize("target", TARGETS)
def test_every_process_binds_the_ports_its_pod_declares(rendered: dict[str, list[Doc]], target: str) -> None:
    """Every service and the heating job declare the API port and the probe port they bind (their environment):
    the probes, the Services and the host-network port check all read the declared ones."""
    docs = rendered[target]
    seen = set()
    for owner, _, container in platform_containers(docs):
        env = container_env(docs, container)
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        assert "probe" in ports, f"{owner} declares no probe port"
        assert (ports["https"], ports["probe"]) == (int(env["HEATER_WEB_PORT"]), int(env["HEATER_PROBE_PORT"])), owner
        seen.add(owner)
    assert seen == set(by_name(docs, "Deployment")) | set(by_name(docs, "CronJob"))


@pytest.mark.parametrize("target", TARGETS)
def test_every_process_serves_its_api_with_its_own_certificate(rendered: dict[str, list[Doc]], target: str) -> None:
    """mTLS is on for every service and the heating job, and each finds its own cert-manager Secret at HEATER_TLS_DIR."""
    docs = rendered[target]
    for owner, spec, container in platform_containers(docs):
        env = container_env(docs, container)
        assert env.get("HEATER_TLS") == "on", owner
        assert env["HEATER_TLS_DIR"] == TLS_DIR
        volumes = {v["name"]: v for v in spec["volumes"]}
        [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == env["HEATER_TLS_DIR"]]
        assert volumes[mount["name"]]["secret"]["secretName"] == f"{spec['serviceAccountName']}-tls", owner


@pytest.mark.parametrize("target", TARGETS)
def test_tls_is_off_nowhere(rendered: dict[str, list[Doc]], target: str) -> None:
    """The production profile refuses HEATER_TLS=off: no ConfigMap and no container may set it, nor any other value."""
    docs = rendered[target]
    values = [cm["data"]["HEATER_TLS"] for cm in of(docs, "ConfigMap") if "HEATER_TLS" in cm.get("data", {})]
    values += [var["value"] for _, spec in pod_specs(docs) for c in spec["containers"] + spec.get("initContainers", [])
               for var in c.get("env", []) if var["name"] == "HEATER_TLS"]
    assert values and set(values) == {"on"}


@pytest.mark.parametrize("target", TARGETS)
def test_host_network_pods_share_no_port_and_resolve_cluster_names(rendered: dict[str, list[Doc]], target: str) -> None:
    """Two pods in the node's network binding one port would leave the second Pending for good."""
    taken: dict[int, str] = {}
    for name, spec in pod_specs(rendered[target]):
        if not spec.get("hostNetwork"):
            continue
        assert spec.get("dnsPolicy") == "ClusterFirstWithHostNet", f"{name} waits for its stage by service name"
        for container in spec["containers"] + spec.get("initContainers", []):
            for port in container.get("ports", []):
                assert port["containerPort"] not in taken, f"{name} and {taken.get(port['containerPort'])} both bind it"
                taken[port["containerPort"]] = name


@pytest.mark.parametrize("target", TARGETS)
def test_the_bridge_starts_from_the_environment_its_manifest_gives(rendered: dict[str, list[Doc]], target: str) -> None:
    """The code's own settings read the rendered environment: heating Jobs from its pod, HAP where phones reach it."""
    docs = rendered[target]
    env = worker_env(docs, "homekit")
    settings, bridge = Settings.from_env(env), BridgeSettings.from_env(env)  # SettingsError if they disagree
    assert settings.profile == "production" and settings.pod_name == POD_NAME  # production_launcher reads its image
    spec = by_name(docs, "Deployment")["homekit"]["spec"]["template"]["spec"]
    ports = {p["name"]: p["containerPort"] for p in spec["containers"][0]["ports"]}
    assert (ports["hap"], ports["https"]) == (bridge.port, settings.web_port)
    if spec.get("hostNetwork"):  # the Pi: announced on the LAN, at the node's address
        assert (bridge.mdns, bridge.advertised_address) == ("all", NODE_ADDRESS)
    else:  # a pod address no phone reaches: nothing announced
        assert bridge.mdns == "off"


def test_the_pi_runs_the_bridge_in_the_nodes_network(rendered: dict[str, list[Doc]]) -> None:
    for name in ("can", "homekit"):
        assert by_name(rendered["overlays/pi"], "Deployment")[name]["spec"]["template"]["spec"].get("hostNetwork") is True


@pytest.mark.parametrize("target", TARGETS)
def test_no_machine_address_is_written_into_the_manifests(rendered: dict[str, list[Doc]], target: str) -> None:
    """Host-network pods reach Kafka and the other services from their resident node, which NetworkPolicy always
    allows; the node's address comes from the Downward API where the code needs it."""
    text = json.dumps(rendered[target])
    assert "ipBlock" not in text
    assert not re.search(r"\b(10\.\d+|192\.168|172\.(1[6-9]|2\d|3[01]))\.\d+\.\d+\b", text), "a LAN address"


@pytest.mark.parametrize("target", TARGETS)
def test_services_expose_the_workers_ports_even_when_not_ready(rendered: dict[str, list[Doc]], target: str) -> None:
    docs = rendered[target]
    deployments = by_name(docs, "Deployment")
    for name, svc in by_name(docs, "Service").items():
        if name == "vault":
            continue
        [worker] = deployments[name]["spec"]["template"]["spec"]["containers"]
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= {p["name"] for p in worker["ports"]}
        assert svc["spec"]["publishNotReadyAddresses"] is True  # a halted service still shows state, takes the reset


@pytest.mark.parametrize("target", TARGETS)
def test_every_volume_refers_to_something_that_will_exist(rendered: dict[str, list[Doc]], target: str) -> None:
    docs = rendered[target]
    config_maps = set(by_name(docs, "ConfigMap"))
    claims = set(by_name(docs, "PersistentVolumeClaim"))
    secrets = ({c["spec"]["secretName"] for c in of(docs, "Certificate")} | set(by_name(docs, "KafkaUser"))
               | {STRIMZI_CA_SECRET})
    assert not of(docs, "Secret"), "secrets never in manifests"
    claim_templates = {t["metadata"]["name"] for d in of(docs, "StatefulSet") for t in d["spec"]["volumeClaimTemplates"]}
    for owner, spec in pod_specs(docs):
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, (owner, volume)
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets, (owner, volume)
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, (owner, volume)
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in config_maps
            names = {v["name"] for v in spec.get("volumes", [])} | claim_templates
            assert {m["name"] for m in container.get("volumeMounts", [])} <= names, (owner, container["name"])


@pytest.mark.parametrize("target", TARGETS)
def test_stages_start_in_the_seeds_order(rendered: dict[str, list[Doc]], target: str) -> None:
    deployments = by_name(rendered[target], "Deployment")
    for component in catalogue.COMPONENTS:
        if component.kind != "service":
            continue
        inits = {c["name"]: c for c in deployments[component.name]["spec"]["template"]["spec"].get("initContainers", [])}
        before = [c.name for c in earlier(component)]
        if not before:
            assert "wait-for-stage" not in inits
            continue
        probe_url = rf"http://([a-z0-9-]+)\.heater\.svc:{PROBE_PORT}/healthz"
        waited = [re.fullmatch(probe_url, url) for url in inits["wait-for-stage"]["args"]]
        assert all(waited), f"{component.name} waits on the plain probe port (/status needs a certificate and a token)"
        assert [m.group(1) for m in waited] == before, component.name


@pytest.mark.parametrize("target", TARGETS)
def test_vault_access_per_service(rendered: dict[str, list[Doc]], target: str) -> None:
    deployments = by_name(rendered[target], "Deployment")
    for name, d in deployments.items():
        spec = d["spec"]["template"]["spec"]
        [worker] = spec["containers"]
        env = {e["name"] for e in worker["env"]}
        sidecars = [c for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]
        uses_vault = name in vault.SERVICE_GRANTS
        assert ("HEATER_VAULT_TOKEN_FILE" in env) == uses_vault == bool(sidecars), name
    script = render()["base/generated/vault-setup.sh"]
    for name in vault.SERVICE_GRANTS:
        assert f"auth/kubernetes/role/{name} bound_service_account_names={name} " in script


def test_services_that_call_vault_have_a_role() -> None:
    from tests.test_topology import SOURCES

    for name, paths in SOURCES.items():
        text = "".join((ROOT / p).read_text() for p in paths)
        calls = any(use in text for use in ("vault_client", "load_allowlist", "ServiceToken"))
        assert calls == (name in vault.SERVICE_GRANTS), name


@pytest.mark.parametrize("target", TARGETS)
def test_network_policies_follow_the_communication_matrix(rendered: dict[str, list[Doc]], target: str) -> None:
    docs = rendered[target]
    policies = by_name(docs, "NetworkPolicy")
    assert set(by_name(docs, "Deployment")) | {"vault", "heating-job"} == set(policies)

    def allowed_from(policy: Doc, source: str, port: int) -> bool:
        for rule in policy["spec"].get("ingress", []):
            if port not in [p["port"] for p in rule.get("ports", [])]:
                continue
            for peer in rule.get("from", [{"podSelector": {}}]):
                selector = peer.get("podSelector", {})
                names = [e["values"] for e in selector.get("matchExpressions", []) if e["key"] == "app.kubernetes.io/name"]
                if "namespaceSelector" not in peer and (not names or source in names[0]):
                    return True
        return False

    assert allowed_from(policies["alarms"], "homekit", WEB_PORT), "the HomeKit bridge reaches AlarmsServer's feed"
    assert not allowed_from(policies["i2c"], "bank", WEB_PORT)  # same stage: no reason to talk
    assert not allowed_from(policies["i2c"], "bank", PROBE_PORT)
    assert not allowed_from(policies["alarms"], "bank", WEB_PORT), "the start order needs only the probe port"
    deployments = by_name(docs, "Deployment")
    for component in catalogue.COMPONENTS:
        for before in earlier(component) if component.name in deployments else []:
            assert allowed_from(policies[before.name], component.name, PROBE_PORT), (component.name, "waits for", before.name)
    for name in vault.SERVICE_GRANTS:
        assert allowed_from(policies["vault"], name, 8200)
    assert not allowed_from(policies["vault"], "bank", 8200)
    for name in by_name(docs, "Deployment"):
        rules = policies[name]["spec"]["ingress"]
        prometheus = [{p["port"] for p in r["ports"]} for r in rules for p in r.get("from", [])
                      if p.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name") == "monitoring"]
        assert prometheus == [{PROBE_PORT}], f"Prometheus scrapes {name} on the probe port, and only there"
        egress_ports = {p["port"] for r in policies[name]["spec"]["egress"] for p in r.get("ports", [])}
        assert 9093 in egress_ports and (8200 in egress_ports) == (name in vault.SERVICE_GRANTS)
        # Only the bridge calls another service's API (AlarmsServer's feed); the rest wait on probe ports.
        assert (WEB_PORT in egress_ports) == (name == "homekit"), name
    [kafka] = of(docs, "Kafka")
    peers = kafka["spec"]["kafka"]["listeners"][0]["networkPolicyPeers"]
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "heater"}}} in peers


@pytest.mark.parametrize("target", TARGETS)
def test_service_monitor_scrapes_every_service(rendered: dict[str, list[Doc]], target: str) -> None:
    docs = rendered[target]
    [monitor] = of(docs, "ServiceMonitor")
    wanted = monitor["spec"]["selector"]["matchLabels"]
    scraped = {n for n, s in by_name(docs, "Service").items() if wanted.items() <= s["metadata"]["labels"].items()}
    assert scraped == set(by_name(docs, "Deployment"))
    # Prometheus has no client certificate: it scrapes the plain probe port, never the API port.
    endpoints = [(e["port"], e.get("scheme", "http"), e["path"]) for e in monitor["spec"]["endpoints"]]
    assert endpoints == [("probe", "http", "/metrics")]
    for name in scraped:
        [port] = [p for p in by_name(docs, "Service")[name]["spec"]["ports"] if p["name"] == "probe"]
        assert port["targetPort"] == "probe", name


@pytest.mark.parametrize("target", TARGETS)
def test_disruption_budgets_cover_every_service(rendered: dict[str, list[Doc]], target: str) -> None:
    budgets = by_name(rendered[target], "PodDisruptionBudget")
    for name, d in by_name(rendered[target], "Deployment").items():
        selector = budgets[name]["spec"]["selector"]["matchLabels"]
        assert selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("target", TARGETS)
def test_scheduled_heating_is_the_controllers_job(rendered: dict[str, list[Doc]], target: str) -> None:
    docs = rendered[target]
    [cron] = of(docs, "CronJob")
    image = by_name(docs, "Deployment")["config"]["spec"]["template"]["spec"]["containers"][0]["image"]
    expected = heating.scheduled_job_spec()
    expected["template"]["spec"]["containers"][0]["image"] = image  # the overlay's image, as for every worker
    assert cron["spec"]["jobTemplate"]["spec"] == expected
    assert cron["spec"]["concurrencyPolicy"] == "Forbid" and cron["spec"]["suspend"] is True
    assert "--job-id" not in expected["template"]["spec"]["containers"][0]["args"]
    template = JobTemplate(image=image)
    assert set(template.env_config_maps) <= set(by_name(docs, "ConfigMap"))
    assert template.service_account in by_name(docs, "ServiceAccount")
    assert {d["metadata"]["namespace"] for d in docs if d["kind"] != "ClusterRoleBinding" and d["kind"] != "Namespace"} == {template.namespace}


def test_settings_name_only_variables_the_code_reads() -> None:
    settings_source = (ROOT / "streams" / "settings.py").read_text() + (ROOT / "homekit" / "config.py").read_text()
    data = yaml.safe_load(render()["base/generated/settings.yaml"].split("\n", 1)[1])["data"]
    env = {e["name"] for f, text in render().items() if "/service-" in f
           for d in yaml.safe_load_all(text) if d and d["kind"] == "Deployment"
           for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
    for name in set(data) | env:
        if name.startswith("HEATER_"):
            assert f'"{name}"' in settings_source, f"{name} is read nowhere"


def test_dockerfile_builds_the_worker_on_python_311_slim() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert "USER 10001" in text
