"""One long-running service: its Deployment and everything around it.

Service account, data volume, Service, cert-manager Certificate, PodDisruptionBudget,
NetworkPolicy and (where the service calls the Kubernetes API) its Role — rendered
from the catalogue (name, stage, control or display) and the communication matrix.
"""

from __future__ import annotations

from typing import Any

from deploy.gen import vault
from deploy.gen.common import (
    CA_ISSUER, CERT_DURATION, CERT_RENEW_BEFORE, CONFIG_DIR, HAP_PORT, IMAGE, KAFKA_CA_DIR, KAFKA_CLUSTER,
    KAFKA_USER_DIR, NAME_LABEL, NAMESPACE, PART_OF, PART_OF_LABEL, PROBE_PORT, PROMETHEUS_NAMESPACE, RUN_DIR,
    STAGE_LABEL, TLS_DIR, VAULT_PORT, VAULT_IMAGE, VAULT_TOKEN_DIR, WAIT_IMAGE, WEB_PORT, WORKER_CONTAINER,
    dns_egress, kafka_egress, labels, meta, services,
)
from heater import catalogue
from streams import topology

USER_ID = 10001
HEALTHZ, READYZ = "/healthz", "/readyz"
#: Readiness of a previous stage, as the phase in its ``/healthz`` says it: ready, or halted by the FATAL latch
#: (see README). Read on the plain probe port: the API port needs a client certificate and a token.
WAIT_SCRIPT = (
    'for url in "$@"; do\n'
    '  until wget -q -T 2 -O - "$url" 2>/dev/null | grep -Eq \'"phase": "(ready|halted)"\'; do\n'
    '    echo "waiting for $url"; sleep 2\n'
    "  done\n"
    "done\n"
)

#: Kubernetes API rights: the registry discovers the platform's pods; the bridge's heating controller runs
#: Jobs (create, follow, delete to stop one), reads its own pod for the image, lists a failed Job's pods.
API_RULES: dict[str, list[dict[str, Any]]] = {
    "registry": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
    "homekit": [
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "list", "delete"]},
        {"apiGroups": ["batch"], "resources": ["jobs/status"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
    ],
}
#: Values from the Downward API, per service: the bridge names its own pod to read its image.
FIELD_ENV: dict[str, dict[str, str]] = {"homekit": {"HEATER_POD_NAME": "metadata.name"}}

#: Requests and memory limits sized for a Raspberry Pi CM5 (4 cores, 4–8 GB shared with Kafka).
#: No CPU limits: throttling a service on the FATAL path would only slow the power cut.
FAUST_RESOURCES = {"requests": {"memory": "192Mi"}, "limits": {"memory": "384Mi"}}
EDGE_RESOURCES = {"requests": {"memory": "96Mi"}, "limits": {"memory": "192Mi"}}
#: A pod's CPU request by the service's place on the FATAL path (its catalogue nice value).
#: Between pods the kernel shares a busy CPU by their requests (cgroup weights); a nice value
#: counts only among the processes of one pod. So the order the local platform keeps with nice
#: values is kept here with requests: the edge adapters first, the deciders of every reading
#: next, the services off the path last.
CPU_REQUEST_BY_NICENESS = {
    catalogue.FATAL_PATH_EDGE: "400m",
    catalogue.BULK_DECIDERS: "100m",
    catalogue.OFF_FATAL_PATH: "50m",
}

EXTRA_ENV: dict[str, dict[str, str]] = {
    "config": {"HEATER_CONFIG_FILE": f"{CONFIG_DIR}/heater.json"},
    "homekit": {
        "HEATER_HOMEKIT_ADDRESS": "0.0.0.0",
        "HEATER_HOMEKIT_PORT": str(HAP_PORT),
        "HEATER_HOMEKIT_MDNS": "off",
        "HEATER_HOMEKIT_FEED_URL": f"wss://alarms.{NAMESPACE}.svc:{WEB_PORT}/homekit/feed",
    },
}
#: Who calls whose API (mTLS, on the API port), server → callers: the bridge reads AlarmsServer's feed.
#: Nothing else crosses between services over HTTP; the start order reads the probe port.
API_CALLERS: dict[str, list[str]] = {"alarms": ["homekit"]}


def identity(name: str) -> str:
    """The service's certificate subject: what it says it is in heartbeats, and its Kafka principal."""
    return f"CN={name}"


def earlier(component: catalogue.Component) -> list[catalogue.Component]:
    return [c for c in services() if c.stage < component.stage]


def later(component: catalogue.Component) -> list[catalogue.Component]:
    return [c for c in services() if c.stage > component.stage]


def faust(name: str) -> bool:
    return topology.BY_NAME[name].faust


def _pods(names: list[str]) -> dict[str, Any]:
    return {"podSelector": {"matchLabels": {PART_OF_LABEL: PART_OF},
                            "matchExpressions": [{"key": NAME_LABEL, "operator": "In", "values": names}]}}


def _port(number: int, protocol: str = "TCP") -> dict[str, Any]:
    return {"protocol": protocol, "port": number}


def service_account(name: str) -> dict[str, Any]:
    # Only pods that log in to Vault or call the API server get a token.
    automount = name in vault.SERVICE_GRANTS or name in API_RULES
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(name, "service"),
            "automountServiceAccountToken": automount}


def api_callees(name: str) -> list[str]:
    """The services whose API ``name`` calls."""
    return sorted(server for server, callers in API_CALLERS.items() if name in callers)


def certificate(name: str) -> dict[str, Any]:
    """mTLS for the service's HTTP API and its client identity, from the platform CA; a new key at each renewal."""
    return {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": meta(name, "certificate"),
        "spec": {
            "secretName": f"{name}-tls",
            "commonName": name,
            "dnsNames": [name, f"{name}.{NAMESPACE}.svc", f"{name}.{NAMESPACE}.svc.cluster.local"],
            "duration": CERT_DURATION,
            "renewBefore": CERT_RENEW_BEFORE,
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
            "usages": ["digital signature", "key encipherment", "server auth", "client auth"],
            "issuerRef": {"name": CA_ISSUER, "kind": "Issuer", "group": "cert-manager.io"},
        },
    }


OPERATOR = "operator"


def operator_certificate() -> dict[str, Any]:
    """The operator's client certificate (CN=operator) for calling the APIs through a port-forward; no server use."""
    cert = certificate(OPERATOR)
    spec = cert["spec"]
    del spec["dnsNames"]
    spec["usages"] = ["digital signature", "client auth"]
    return cert


def data_claim(name: str) -> dict[str, Any]:
    """The run directory: RocksDB tables (Faust services), the reset ledger (i2c), pairings (homekit)."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": meta(f"{name}-data", "data"),
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi" if faust(name) else "128Mi"}}},
    }


def ports(name: str) -> list[dict[str, Any]]:
    """The API (HTTPS, client certificate required) and the plain probe port (health, readiness, metrics only)."""
    out = [{"name": "https", "containerPort": WEB_PORT, "protocol": "TCP"},
           {"name": "probe", "containerPort": PROBE_PORT, "protocol": "TCP"}]
    if name == "homekit":
        out.append({"name": "hap", "containerPort": HAP_PORT, "protocol": "TCP"})
    return out


def service(name: str) -> dict[str, Any]:
    """Not-ready addresses stay published: a halted service must still show its state and take the reset."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(name, "service"),
        "spec": {
            "selector": {NAME_LABEL: name, PART_OF_LABEL: PART_OF},
            "publishNotReadyAddresses": True,
            "ports": [{"name": p["name"], "port": p["containerPort"], "targetPort": p["name"], "protocol": "TCP"}
                      for p in ports(name)],
        },
    }


def probes() -> dict[str, Any]:
    """Liveness on /healthz only: a halted service is alive (200) and never killed; /readyz is 503 while halted.

    On the plain probe port: the kubelet has no client certificate for the API port.
    """
    def get(path: str) -> dict[str, Any]:
        return {"path": path, "port": "probe"}

    return {
        "startupProbe": {"httpGet": get(HEALTHZ), "periodSeconds": 2, "timeoutSeconds": 2, "failureThreshold": 90},
        "livenessProbe": {"httpGet": get(HEALTHZ), "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 3},
        "readinessProbe": {"httpGet": get(READYZ), "periodSeconds": 2, "timeoutSeconds": 2, "failureThreshold": 1},
    }


def env(name: str) -> list[dict[str, Any]]:
    values = {"HEATER_SERVICE_IDENTITY": identity(name), "HEATER_BROKER_SSL_CERTFILE": f"{KAFKA_USER_DIR}/user.crt",
              "HEATER_BROKER_SSL_KEYFILE": f"{KAFKA_USER_DIR}/user.key", **EXTRA_ENV.get(name, {})}
    if name in vault.SERVICE_GRANTS:
        values["HEATER_VAULT_TOKEN_FILE"] = vault.TOKEN_FILE
    fields = {k: {"valueFrom": {"fieldRef": {"fieldPath": path}}} for k, path in FIELD_ENV.get(name, {}).items()}
    return [{"name": k, **({"value": values[k]} if k in values else fields[k])} for k in sorted({*values, *fields})]


def volumes(name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pod volumes, the worker's mounts)."""
    vols = [
        {"name": "data", "persistentVolumeClaim": {"claimName": f"{name}-data"}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        {"name": "tls", "secret": {"secretName": f"{name}-tls"}},
        {"name": "kafka-user", "secret": {"secretName": name}},
        {"name": "kafka-ca", "secret": {"secretName": f"{KAFKA_CLUSTER}-cluster-ca-cert"}},
    ]
    mounts = [
        {"name": "data", "mountPath": RUN_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "tls", "mountPath": TLS_DIR, "readOnly": True},
        {"name": "kafka-user", "mountPath": KAFKA_USER_DIR, "readOnly": True},
        {"name": "kafka-ca", "mountPath": KAFKA_CA_DIR, "readOnly": True},
    ]
    if name == "config":
        vols.append({"name": "bootstrap", "configMap": {"name": "heater-config"}})
        mounts.append({"name": "bootstrap", "mountPath": CONFIG_DIR, "readOnly": True})
    if name in vault.SERVICE_GRANTS:
        vols += [{"name": "vault-token", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
                 {"name": "vault-agent", "configMap": {"name": f"vault-agent-{name}"}}]
        mounts.append({"name": "vault-token", "mountPath": VAULT_TOKEN_DIR, "readOnly": True})
    return vols, mounts


def _restricted() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}


def init_containers(component: catalogue.Component) -> list[dict[str, Any]]:
    """Wait for every earlier stage (seeds' order), then start the Vault Agent sidecar where needed."""
    out = []
    before = earlier(component)
    if before:
        out.append({
            "name": "wait-for-stage",
            "image": WAIT_IMAGE,
            "command": ["sh", "-c", WAIT_SCRIPT, "wait-for-stage"],
            "args": [f"http://{c.name}.{NAMESPACE}.svc:{PROBE_PORT}/healthz" for c in before],
            "resources": {"requests": {"cpu": "5m", "memory": "8Mi"}, "limits": {"memory": "16Mi"}},
            "securityContext": _restricted(),
        })
    name = component.name
    if name in vault.SERVICE_GRANTS:
        out.append({
            "name": "vault-agent",
            "image": VAULT_IMAGE,
            "restartPolicy": "Always",  # a native sidecar: up (token written) before the worker starts
            "args": ["agent", "-config=/vault/config/agent.hcl"],
            "env": [{"name": "SKIP_SETCAP", "value": "true"}],
            "startupProbe": {"exec": {"command": ["test", "-s", vault.TOKEN_FILE]}, "periodSeconds": 1, "failureThreshold": 120},
            "resources": {"requests": {"cpu": "5m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}},
            "securityContext": _restricted(),
            "volumeMounts": [
                {"name": "vault-token", "mountPath": VAULT_TOKEN_DIR},
                {"name": "vault-agent", "mountPath": "/vault/config", "readOnly": True},
                {"name": "tls", "mountPath": TLS_DIR, "readOnly": True},
                {"name": "tmp", "mountPath": "/tmp"},
            ],
        })
    return out


def resources(component: catalogue.Component) -> dict[str, Any]:
    sized = FAUST_RESOURCES if faust(component.name) else EDGE_RESOURCES
    cpu = CPU_REQUEST_BY_NICENESS[component.niceness]
    return {"requests": {"cpu": cpu, **sized["requests"]}, "limits": dict(sized["limits"])}


def deployment(component: catalogue.Component) -> dict[str, Any]:
    name = component.name
    vols, mounts = volumes(name)
    pod_labels = {**labels(name, "service"), STAGE_LABEL: str(component.stage)}
    container = {
        "name": WORKER_CONTAINER,
        "image": IMAGE,
        "command": ["heater", "worker", name],
        "ports": ports(name),
        "envFrom": [{"configMapRef": {"name": "heater-settings"}}],
        "env": env(name),
        **probes(),
        "resources": resources(component),
        "securityContext": _restricted(),
        "volumeMounts": mounts,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {**meta(name, "service"), "annotations": {
            "heater.local/control": str(component.control).lower(),
            "heater.local/description": component.description,
        }},
        "spec": {
            "replicas": 1,
            # Never two of a service at once (one relay board, one RocksDB volume): stop, then start.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {NAME_LABEL: name, PART_OF_LABEL: PART_OF}},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "serviceAccountName": name,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": USER_ID, "runAsGroup": USER_ID,
                                        "fsGroup": USER_ID, "seccompProfile": {"type": "RuntimeDefault"}},
                    "initContainers": init_containers(component),
                    "containers": [container],
                    "volumes": vols,
                },
            },
        },
    }


def disruption_budget(name: str) -> dict[str, Any]:
    """Voluntary evictions (a drain) wait for the operator; a halted (not ready) pod may still be evicted."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(name, "service"),
        "spec": {"minAvailable": 1, "unhealthyPodEvictionPolicy": "AlwaysAllow",
                 "selector": {"matchLabels": {NAME_LABEL: name, PART_OF_LABEL: PART_OF}}},
    }


def network_policy(component: catalogue.Component) -> dict[str, Any]:
    """Ingress: Prometheus and later stages' start-up wait on the probe port, API callers on the API port, the phone
    on HAP. Egress: DNS, Kafka, Vault, earlier stages' probe port, the APIs it calls, the API server."""
    name = component.name
    ingress: list[dict[str, Any]] = [{
        "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": PROMETHEUS_NAMESPACE}},
                  "podSelector": {"matchLabels": {NAME_LABEL: "prometheus"}}}],
        "ports": [_port(PROBE_PORT)],
    }]
    readers = [c.name for c in later(component)]
    if readers:
        ingress.append({"from": [_pods(readers)], "ports": [_port(PROBE_PORT)]})
    if name in API_CALLERS:
        ingress.append({"from": [_pods(API_CALLERS[name])], "ports": [_port(WEB_PORT)]})
    if name == "homekit":
        ingress.append({"ports": [_port(HAP_PORT)]})  # the iPhone, from the LAN
    egress: list[dict[str, Any]] = [dns_egress(), kafka_egress()]
    if name in vault.SERVICE_GRANTS:
        egress.append({"to": [{"podSelector": {"matchLabels": {NAME_LABEL: "vault"}}}], "ports": [_port(VAULT_PORT)]})
    upstream = [c.name for c in earlier(component)]
    if upstream:
        egress.append({"to": [_pods(upstream)], "ports": [_port(PROBE_PORT)]})
    if api_callees(name):
        egress.append({"to": [_pods(api_callees(name))], "ports": [_port(WEB_PORT)]})
    if name in API_RULES:
        egress.append({"ports": [_port(443), _port(6443)]})  # the API server (its address is the cluster's)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta(name, "service"),
        "spec": {"podSelector": {"matchLabels": {NAME_LABEL: name, PART_OF_LABEL: PART_OF}},
                 "policyTypes": ["Ingress", "Egress"], "ingress": ingress, "egress": egress},
    }


def api_access(name: str) -> list[dict[str, Any]]:
    if name not in API_RULES:
        return []
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta(name, "service"),
         "rules": API_RULES[name]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta(name, "service"),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}]},
    ]


def documents(component: catalogue.Component) -> list[dict[str, Any]]:
    name = component.name
    docs = [service_account(name), certificate(name), data_claim(name), service(name), deployment(component),
            disruption_budget(name), network_policy(component), *api_access(name)]
    if name in vault.SERVICE_GRANTS:
        docs.append(vault.agent_config_map(name))
    return docs

