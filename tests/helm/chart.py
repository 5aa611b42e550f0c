"""Rendering the shardgate chart with the real helm and reading the result.

`Charts` renders `helm template` with a set of `--set` values, validates the rendering with
kubernetes-validate (under the tools interpreter, `deploy/tools/k8s_validate.py`) and hands back
the parsed documents. Renderings are cached per value set for the session.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "helm" / "shardgate"
TOOLS = REPO_ROOT / "deploy" / "tools"
RELEASE = "sg"
NAMESPACE = "shardgate"
FULLNAME = f"{RELEASE}-shardgate"
HELM_TIMEOUT_S = 60.0
VALIDATE_TIMEOUT_S = 120.0
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "ScaledObject"}
"""Kinds kubernetes-validate has no schema for; tests/helm checks them structurally."""

Doc = dict[str, Any]

# The value sets the acceptance names, plus the options each one turns on.
SCENARIOS: dict[str, list[str]] = {
    "default": [],
    "bundled-redis": [
        "redis.mode=bundled", "redis.bundled.auth.enabled=true", "redis.bundled.auth.password=s3cret",
        "redis.bundled.persistence.storageClass=fast-ssd", "metrics.serviceMonitor.enabled=true",
        "metrics.prometheusRule.enabled=true", "networkPolicy.allowExternal=false",
        "networkPolicy.allowExternalEgress=false", "requestIdentity.existingSecret=sg-identity",
        "ingress.config.concurrencyLimit=500", "ingress.service.type=LoadBalancer",
    ],
    "external-redis-cluster": [
        "redis.mode=external", "redis.external.url=redis://:pw@redis-cluster.db.svc:6379/0",
        "redis.external.cluster=true", "partition.advertise=podIP", "networkPolicy.allowExternalEgress=false",
    ],
    "keda": ["partition.keda.enabled=true", "ingress.autoscaling.enabled=false", "metrics.serviceMonitor.enabled=true"],
}


class HelmError(AssertionError):
    """helm exited non-zero; the message carries its stderr."""


def supported_versions() -> list[str]:
    """The Kubernetes minor versions Chart.yaml says the renderings are validated against."""
    for line in (CHART / "Chart.yaml").read_text().splitlines():
        if "shardgate.dev/validated-kubernetes-versions" in line:
            return line.split(":", 1)[1].strip().strip('"').split()
    raise AssertionError("Chart.yaml lacks the shardgate.dev/validated-kubernetes-versions annotation")


def run_helm(helm: Path, *args: str) -> str:
    """helm's stdout; raises HelmError with its stderr when it fails."""
    done = subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=HELM_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise HelmError(f"helm {' '.join(args)} exited {done.returncode}:\n{done.stderr}{done.stdout}")
    return done.stdout


@dataclass
class Rendering:
    """One `helm template` result: the documents and kubernetes-validate's verdict."""

    docs: list[Doc]
    errors: list[str]
    no_schema: list[str]
    path: Path

    def of_kind(self, kind: str) -> list[Doc]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name: str) -> Doc:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
        return found[0]

    def workloads(self) -> list[Doc]:
        return [d for d in self.docs if d["kind"] in ("Deployment", "StatefulSet")]

    def workload(self, component: str) -> Doc:
        found = [w for w in self.workloads()
                 if w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == component]
        assert len(found) == 1, f"expected one {component} workload, found {len(found)}"
        return found[0]


@dataclass
class Charts:
    helm: Path
    python: Path
    workdir: Path
    _cache: dict[tuple[str, ...], Rendering] = field(default_factory=dict)

    def render(self, sets: list[str], *, validate: bool = True) -> Rendering:
        """`helm template` of the chart with `sets`; validated against every supported version."""
        key = (*sets, str(validate))
        if key in self._cache:
            return self._cache[key]
        args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
        for item in sets:
            args += ["--set", item]
        path = self.workdir / f"rendering-{len(self._cache)}.yaml"
        path.write_text(run_helm(self.helm, *args))
        argv = [str(self.python), str(TOOLS / "k8s_validate.py"), str(path)]
        if validate:
            argv.append("--strict")
            for version in supported_versions():
                argv += ["-k", f"{version}.0"]
        else:
            argv += ["-k", f"{supported_versions()[-1]}.0"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=VALIDATE_TIMEOUT_S, check=False)
        assert done.returncode == 0, f"k8s_validate failed: {done.stderr}"
        report = json.loads(done.stdout)
        rendering = Rendering(report["documents"], report["errors"] if validate else [],
                              report["no_schema"], path)
        self._cache[key] = rendering
        return rendering


def pod_spec(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def container(workload: Doc, name: str) -> Doc:
    found: list[Doc] = [c for c in pod_spec(workload)["containers"] if c["name"] == name]
    assert len(found) == 1, f"no container {name} in {workload['metadata']['name']}"
    return found[0]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# ---- container environment as the kubelet builds it --------------------------------------------

_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined variables are replaced, `$$` is a literal `$`."""
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR_REF.sub(sub, value)


def _secret_data(rendering: Rendering, name: str, secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    if name in secrets:
        return secrets[name]
    secret = rendering.one("Secret", name)
    return {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}


def resolve_env(rendering: Rendering, ctr: Doc, *, pod_name: str, pod_ip: str,
                secrets: dict[str, dict[str, str]] | None = None) -> dict[str, str]:
    """The environment a container gets: envFrom ConfigMaps/Secrets, then `env` in order, with
    field references (`metadata.name`, `metadata.namespace`, `status.podIP`) and `$(VAR)` resolved.
    `secrets` stands in for Secrets the rendering does not contain (existingSecret)."""
    secrets = secrets or {}
    env: dict[str, str] = {}
    for source in ctr.get("envFrom", []):
        if "configMapRef" in source:
            env.update(rendering.one("ConfigMap", source["configMapRef"]["name"])["data"])
        elif "secretRef" in source:
            env.update(_secret_data(rendering, source["secretRef"]["name"], secrets))
    fields = {"metadata.name": pod_name, "metadata.namespace": NAMESPACE, "status.podIP": pod_ip}
    for item in ctr.get("env", []):
        if "value" in item:
            env[item["name"]] = expand(str(item["value"]), env)
        elif "fieldRef" in item["valueFrom"]:
            env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = _secret_data(rendering, ref["name"], secrets)[ref["key"]]
        else:
            raise AssertionError(f"unsupported env source {item}")
    return env


def container_port(ctr: Doc, port: int | str) -> int:
    """A probe's or Service's port (a number or a container port name) as a number."""
    if isinstance(port, int):
        return port
    for p in ctr.get("ports", []):
        if p["name"] == port:
            return int(p["containerPort"])
    raise AssertionError(f"container {ctr['name']} has no port named {port!r}")


def yaml_file_as_json(python: Path, path: Path) -> Any:
    """Parse a YAML file with the tools interpreter (it has PyYAML) and return its content."""
    code = "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)"
    done = subprocess.run([str(python), "-c", code, str(path)], capture_output=True, text=True,
                          timeout=HELM_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
