"""The Helm chart, rendered by the real helm and validated by kubernetes-validate.

For each value set of the acceptance (defaults, bundled Redis with every option on, an external
Redis Cluster, KEDA): `helm lint --strict`, `kubernetes-validate --strict` for every Kubernetes
version the chart supports, and checks on the rendered objects: selectors match labels, ports and
probes match the ports the processes' config dataclasses read, every `SHARDGATE_*` variable is one
`IngressConfig.from_env` / `PartitionConfig.from_env` reads, and the rendered environment is
accepted by them.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from ingress.config import IngressConfig
from partition.config import PartitionConfig
from tests.helm.chart import (
    CHART,
    CRD_KINDS,
    FULLNAME,
    NAMESPACE,
    SCENARIOS,
    TOOLS,
    Charts,
    Doc,
    HelmError,
    Rendering,
    container,
    container_port,
    matches,
    pod_spec,
    resolve_env,
    run_helm,
)

ConfigClass = type[IngressConfig] | type[PartitionConfig]
CONFIG_OF: dict[str, ConfigClass] = {"ingress": IngressConfig, "partition": PartitionConfig}
STANDARD_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                   "app.kubernetes.io/managed-by", "app.kubernetes.io/component", "helm.sh/chart")
SELECTOR_LABELS = {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component"}
EXISTING_SECRETS = {"sg-identity": {"private.pem": "-----BEGIN PRIVATE KEY-----\n"}}
POD_IP = "10.1.2.3"

# Chart settings that differ from the dataclass defaults on purpose (a pod binds every address;
# the ingress advertises its Service URL; workers get their identity and address from the pod).
INTENDED_DIFFERENCES = {"SHARDGATE_BIND_HOST", "SHARDGATE_ADVERTISED_INGRESS_URL", "SHARDGATE_WORKER_ID",
                        "SHARDGATE_ADVERTISED_HOST", "SHARDGATE_REDIS_URL"}


class _RecordingEnv(Mapping[str, str]):
    """An empty environment that remembers every variable looked up in it."""

    def __init__(self) -> None:
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def variables_read(cls: ConfigClass) -> set[str]:
    """Every environment variable `cls.from_env` looks up."""
    env = _RecordingEnv()
    cls.from_env(env)
    return env.read


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def scenario(request: pytest.FixtureRequest, charts: Charts) -> tuple[str, Rendering]:
    name: str = request.param
    return name, charts.render(SCENARIOS[name])


def _env(rendering: Rendering, component: str) -> dict[str, str]:
    workload = rendering.workload(component)
    pod = f"{workload['metadata']['name']}-0" if workload["kind"] == "StatefulSet" else f"{workload['metadata']['name']}-7d9f8-x2x4q"
    return resolve_env(rendering, container(workload, component), pod_name=pod, pod_ip=POD_IP,
                       secrets=EXISTING_SECRETS)


# ---- lint and schema validation ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_helm_lint_strict(helm: Any, name: str) -> None:
    args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE]
    for item in SCENARIOS[name]:
        args += ["--set", item]
    out = run_helm(helm, *args)
    assert "0 chart(s) failed" in out, out


def test_rendering_passes_kubernetes_validate(scenario: tuple[str, Rendering]) -> None:
    name, rendering = scenario
    assert rendering.errors == [], f"{name}: " + "\n".join(rendering.errors)
    unvalidated = {entry.split()[-1] for entry in rendering.no_schema}
    assert unvalidated <= CRD_KINDS, f"{name}: no schema for {unvalidated - CRD_KINDS}"


def test_validator_rejects_an_unknown_field(charts: Charts, tmp_path: Any) -> None:
    """The strict validation is real: one misspelt field in a rendered Deployment is an error."""
    docs = [json.loads(json.dumps(d)) for d in charts.render([]).docs]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod_spec(deployment)["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/", "port": 1}}
    bad = tmp_path / "bad.yaml"
    bad.write_text("\n---\n".join(json.dumps(d) for d in docs))
    done = subprocess.run([str(charts.python), str(TOOLS / "k8s_validate.py"),
                           "--strict", "-k", "1.30.0", str(bad)], capture_output=True, text=True, timeout=60,
                          check=False)
    errors = json.loads(done.stdout)["errors"]
    assert any("readinesProbe" in e for e in errors), errors


@pytest.mark.parametrize("sets, message", [
    (["partition.advertise=hostname"], "partition/advertise"),
    (["redis.bundled.appendfsync=no"], "appendfsync"),
    (["partitions=0"], "partitions"),
    (["ingress.ports.http=70000"], "ingress/ports/http"),
    (["ingress.replicas=3"], "additional properties"),
    (["partitions=2", "partition.replicaCount=3"], "must not exceed partitions"),
    (["redis.mode=external"], "redis.external.existingSecret"),
    (["redis.bundled.auth.enabled=true"], "redis.bundled.auth.existingSecret"),
])
def test_bad_values_are_refused(helm: Any, sets: list[str], message: str) -> None:
    args = ["template", "sg", str(CHART)]
    for item in sets:
        args += ["--set", item]
    with pytest.raises(HelmError) as failure:
        run_helm(helm, *args)
    assert message in str(failure.value)


# ---- labels and selectors ------------------------------------------------------------------------


def test_every_object_has_the_standard_labels(scenario: tuple[str, Rendering]) -> None:
    _, rendering = scenario
    for doc in rendering.docs:
        labels = doc["metadata"].get("labels", {})
        missing = [k for k in STANDARD_LABELS if k not in labels]
        assert not missing, f"{doc['kind']}/{doc['metadata']['name']} lacks {missing}"
    for workload in rendering.workloads():
        template_labels = workload["spec"]["template"]["metadata"]["labels"]
        assert template_labels["app.kubernetes.io/component"] in ("ingress", "partition", "redis")
        assert set(workload["spec"]["selector"]["matchLabels"]) == SELECTOR_LABELS


def _selected_workloads(rendering: Rendering, selector: dict[str, str]) -> list[Doc]:
    return [w for w in rendering.workloads() if matches(selector, w["spec"]["template"]["metadata"]["labels"])]


def test_selectors_match_pod_labels(scenario: tuple[str, Rendering]) -> None:
    name, rendering = scenario
    for workload in rendering.workloads():
        assert matches(workload["spec"]["selector"]["matchLabels"], workload["spec"]["template"]["metadata"]["labels"])
        for constraint in pod_spec(workload).get("topologySpreadConstraints", []):
            assert _selected_workloads(rendering, constraint["labelSelector"]["matchLabels"]) == [workload]
    for service in rendering.of_kind("Service"):
        selected = _selected_workloads(rendering, service["spec"]["selector"])
        assert len(selected) == 1, f"{name}: Service {service['metadata']['name']} selects {len(selected)} workloads"
        ctr = pod_spec(selected[0])["containers"][0]
        for port in service["spec"]["ports"]:
            container_port(ctr, port["targetPort"])  # the named port exists on the selected pods
    for pdb in rendering.of_kind("PodDisruptionBudget"):
        assert len(_selected_workloads(rendering, pdb["spec"]["selector"]["matchLabels"])) == 1
    for policy in rendering.of_kind("NetworkPolicy"):
        targets = _selected_workloads(rendering, policy["spec"]["podSelector"]["matchLabels"])
        assert len(targets) == 1, f"NetworkPolicy {policy['metadata']['name']} selects {len(targets)} workloads"
        for rule in policy["spec"].get("ingress", []):
            for port in rule["ports"]:
                container_port(pod_spec(targets[0])["containers"][0], port["port"])
            for peer in rule.get("from", []):
                labels = peer.get("podSelector", {}).get("matchLabels")
                if labels and "app.kubernetes.io/component" in labels:
                    assert _selected_workloads(rendering, labels), f"peer {labels} selects nothing"


def test_statefulsets_are_governed_by_headless_services(scenario: tuple[str, Rendering]) -> None:
    _, rendering = scenario
    for sts in rendering.of_kind("StatefulSet"):
        service = rendering.one("Service", sts["spec"]["serviceName"])
        assert service["spec"]["clusterIP"] == "None"
        assert _selected_workloads(rendering, service["spec"]["selector"]) == [sts]
    headless = rendering.one("Service", f"{FULLNAME}-partition-headless")
    assert headless["spec"]["publishNotReadyAddresses"] is True  # the advertised name resolves before ready


def test_autoscalers_and_monitors_target_rendered_objects(scenario: tuple[str, Rendering]) -> None:
    name, rendering = scenario
    names = {(d["kind"], d["metadata"]["name"]) for d in rendering.docs}
    for scaler in rendering.of_kind("HorizontalPodAutoscaler") + rendering.of_kind("ScaledObject"):
        ref = scaler["spec"]["scaleTargetRef"]
        assert (ref["kind"], ref["name"]) in names
        target = rendering.one(ref["kind"], ref["name"])
        assert "replicas" not in target["spec"], f"{name}: {ref['name']} has replicas and an autoscaler"
    for monitor in rendering.of_kind("ServiceMonitor"):
        services = [s for s in rendering.of_kind("Service")
                    if matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        assert len(services) == 1, f"ServiceMonitor {monitor['metadata']['name']} selects {len(services)} Services"
        port_names = {p["name"] for p in services[0]["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"


# ---- ports, probes and environment ---------------------------------------------------------------


def test_chart_port_defaults_are_the_config_defaults(charts: Charts) -> None:
    rendering = charts.render([])
    expected = {
        ("ingress", "http"): IngressConfig.ingress_port, ("ingress", "admin"): IngressConfig.admin_port,
        ("partition", "grpc"): PartitionConfig.grpc_port, ("partition", "metrics"): PartitionConfig.metrics_port,
    }
    for (component, port_name), port in expected.items():
        assert container_port(container(rendering.workload(component), component), port_name) == port


def test_chart_settings_default_to_the_config_defaults(charts: Charts) -> None:
    """Apart from the pod-specific ones, every setting the default chart renders is the process's own default."""
    rendering = charts.render([])
    for component, cls in CONFIG_OF.items():
        env = _env(rendering, component)
        defaults = cls.from_env({})
        for var in sorted(set(env) - INTENDED_DIFFERENCES):
            if not var.startswith("SHARDGATE_"):
                continue
            single = cls.from_env({var: env[var]})
            changed = [f.name for f in dataclasses.fields(cls) if getattr(single, f.name) != getattr(defaults, f.name)
                       and f.name != "worker_id"]
            assert changed == [], f"{component}: {var}={env[var]} changes {changed} from the default"


def test_ports_and_probes_match_what_the_processes_serve(scenario: tuple[str, Rendering]) -> None:
    name, rendering = scenario
    ingress_cfg = IngressConfig.from_env(_env(rendering, "ingress"))
    ingress = container(rendering.workload("ingress"), "ingress")
    assert container_port(ingress, "http") == ingress_cfg.ingress_port
    assert container_port(ingress, "admin") == ingress_cfg.admin_port
    worker_cfg = PartitionConfig.from_env(_env(rendering, "partition"))
    worker = container(rendering.workload("partition"), "partition")
    assert container_port(worker, "grpc") == worker_cfg.grpc_port
    assert container_port(worker, "metrics") == worker_cfg.metrics_port
    # What each process serves, and which of it never depends on Redis (liveness may use only those).
    served = {
        "ingress": {(ingress_cfg.ingress_port, "/restate/health"), (ingress_cfg.admin_port, "/health")},
        "partition": {(worker_cfg.metrics_port, "/health"), (worker_cfg.metrics_port, "/ready")},
    }
    redis_free = {"ingress": served["ingress"], "partition": {(worker_cfg.metrics_port, "/health")}}
    for component, ctr in (("ingress", ingress), ("partition", worker)):
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = ctr[kind]["httpGet"]
            target = (container_port(ctr, probe["port"]), probe["path"])
            assert target in served[component], f"{name}: {component} {kind} {target} is not served"
            if kind == "livenessProbe":
                assert target in redis_free[component], f"{component} liveness {target} depends on Redis"
    assert worker["readinessProbe"]["httpGet"]["path"] == "/ready"


@pytest.mark.parametrize("component", sorted(CONFIG_OF))
def test_every_shardgate_variable_is_read_by_the_config(scenario: tuple[str, Rendering], component: str) -> None:
    name, rendering = scenario
    ctr = container(rendering.workload(component), component)
    names = {e["name"] for e in ctr.get("env", [])}
    for source in ctr.get("envFrom", []):
        names |= set(rendering.one("ConfigMap", source["configMapRef"]["name"])["data"])
    unknown = {n for n in names if n.startswith("SHARDGATE_")} - variables_read(CONFIG_OF[component])
    assert unknown == set(), f"{name}: {component} sets variables its config never reads: {sorted(unknown)}"


def test_rendered_environment_is_accepted(scenario: tuple[str, Rendering]) -> None:
    name, rendering = scenario
    worker = PartitionConfig.from_env(_env(rendering, "partition"))
    assert worker.worker_id == f"{FULLNAME}-partition-0"
    assert worker.bind_host == "0.0.0.0"
    if name == "external-redis-cluster":
        assert worker.advertised_host == POD_IP
        assert worker.redis_url == "redis://:pw@redis-cluster.db.svc:6379/0"
    else:
        assert worker.advertised_host == f"{FULLNAME}-partition-0.{FULLNAME}-partition-headless.{NAMESPACE}.svc.cluster.local"
        password = ":s3cret@" if name == "bundled-redis" else ""
        assert worker.redis_url == f"redis://{password}{FULLNAME}-redis.{NAMESPACE}.svc.cluster.local:6379/0"
    ingress = IngressConfig.from_env(_env(rendering, "ingress"))
    assert ingress.partitions == worker.partitions
    assert ingress.redis_url == worker.redis_url
    if name == "bundled-redis":
        assert ingress.request_identity_key_file == worker.request_identity_key_file == "/etc/shardgate/identity/private.pem"
        assert ingress.concurrency_limit == 500


# ---- pods: security, shutdown, rolling on config changes -----------------------------------------


def test_pods_are_non_root_read_only_without_capabilities(scenario: tuple[str, Rendering]) -> None:
    _, rendering = scenario
    for workload in rendering.workloads():
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        mounts = {v["name"] for v in spec["volumes"]}
        for ctr in spec["containers"]:
            sc = ctr["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["runAsNonRoot"] is True and sc["capabilities"]["drop"] == ["ALL"]
            assert "/tmp" in {m["mountPath"] for m in ctr["volumeMounts"]}
            assert {m["name"] for m in ctr["volumeMounts"]} <= mounts | {"data"}


def test_prestop_and_grace_period_are_settings(charts: Charts) -> None:
    default = charts.render([])
    ingress = default.workload("ingress")
    assert container(ingress, "ingress")["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    assert pod_spec(ingress)["terminationGracePeriodSeconds"] == 45
    assert "lifecycle" not in container(default.workload("partition"), "partition")
    tuned = charts.render(["ingress.preStop.sleepSeconds=0", "ingress.terminationGracePeriodSeconds=90",
                           "partition.preStop.sleepSeconds=2", "partition.terminationGracePeriodSeconds=20"])
    assert "lifecycle" not in container(tuned.workload("ingress"), "ingress")
    assert pod_spec(tuned.workload("ingress"))["terminationGracePeriodSeconds"] == 90
    assert container(tuned.workload("partition"), "partition")["lifecycle"]["preStop"]["sleep"]["seconds"] == 2
    assert pod_spec(tuned.workload("partition"))["terminationGracePeriodSeconds"] == 20


def _checksums(rendering: Rendering) -> dict[str, str]:
    return {w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]:
            w["spec"]["template"]["metadata"]["annotations"]["checksum/config"] for w in rendering.workloads()}


def test_config_changes_roll_exactly_the_affected_pods(charts: Charts) -> None:
    base = _checksums(charts.render([]))
    log = _checksums(charts.render(["logLevel=DEBUG"], validate=False))
    assert log["ingress"] != base["ingress"] and log["partition"] != base["partition"]
    assert log["redis"] == base["redis"]
    fsync = _checksums(charts.render(["redis.bundled.appendfsync=everysec"], validate=False))
    assert fsync["redis"] != base["redis"] and fsync["ingress"] == base["ingress"]
    secret = charts.render(["redis.bundled.auth.enabled=true", "redis.bundled.auth.password=a"], validate=False)
    other = charts.render(["redis.bundled.auth.enabled=true", "redis.bundled.auth.password=b"], validate=False)
    for component in ("ingress", "partition", "redis"):
        annotations = [r.workload(component)["spec"]["template"]["metadata"]["annotations"] for r in (secret, other)]
        assert annotations[0]["checksum/secret"] != annotations[1]["checksum/secret"]


# ---- Redis ---------------------------------------------------------------------------------------


def test_bundled_redis_is_durable(charts: Charts) -> None:
    rendering = charts.render([])
    sts = rendering.workload("redis")
    conf = rendering.one("ConfigMap", f"{FULLNAME}-redis")["data"]["redis.conf"].splitlines()
    for line in ("appendonly yes", "appendfsync always", "maxmemory-policy noeviction", 'save ""', "dir /data"):
        assert line in conf
    claim = sts["spec"]["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] == "data" and claim["spec"]["resources"]["requests"]["storage"] == "8Gi"
    assert {"name": "data", "mountPath": "/data"} in container(sts, "redis")["volumeMounts"]


def test_external_redis_comes_from_a_secret(charts: Charts) -> None:
    rendering = charts.render(SCENARIOS["external-redis-cluster"])
    assert not [w for w in rendering.workloads() if "redis" in w["metadata"]["name"]]
    for component in ("ingress", "partition"):
        ctr = container(rendering.workload(component), component)
        ref = next(e for e in ctr["env"] if e["name"] == "SHARDGATE_REDIS_URL")["valueFrom"]["secretKeyRef"]
        assert rendering.one("Secret", ref["name"])["data"][ref["key"]]
    own = charts.render(["redis.mode=external", "redis.external.existingSecret=mine"])
    assert own.of_kind("Secret") == []
    ctr = container(own.workload("partition"), "partition")
    ref = next(e for e in ctr["env"] if e["name"] == "SHARDGATE_REDIS_URL")["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "mine", "key": "redis-url"}


def test_keda_scales_workers_on_in_flight_invocations(charts: Charts) -> None:
    from partition.metrics import IN_FLIGHT

    rendering = charts.render(SCENARIOS["keda"])
    (scaled,) = rendering.of_kind("ScaledObject")
    assert scaled["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet",
                                                 "name": f"{FULLNAME}-partition"}
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert IN_FLIGHT._name in trigger["metadata"]["query"]
    assert rendering.of_kind("HorizontalPodAutoscaler") == []
