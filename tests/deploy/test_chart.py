"""helm/medsynth rendered offline (helm-python-sdk: Helm's own engine, no cluster) for its default
values and for the GPU-pool values, every manifest validated against the Kubernetes schemas
(kubernetes-validate, strict) and the KEDA / Prometheus Operator CRD schemas vendored in crds/, and
the rules the deployment relies on read from what was rendered."""

from __future__ import annotations

import copy
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from medsynth.bus.topics import command_topic
from medsynth.handlers import handlers_for
from test_images import SERVICES

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "medsynth"
CRDS = Path(__file__).parent / "crds"
KUBERNETES = "1.31"  # the oldest minor the chart is validated for; kubeVersion in Chart.yaml allows >= 1.27
GPU_STAGES = {"trainer", "segmenter", "sampler"}  # the sampler through its TorchServe container
WORKERS = {"trainer", "sampler", "segmenter", "evaluator"}
GPU_VALUES = yaml.safe_load((CHART / "values-gpu.yaml").read_text())


def render(values: dict | None = None) -> list[dict]:
    chart = helm.Chart.load(CHART)
    chart.validate_schema(values or {})
    rendered = chart.render(values or {}, name="medsynth", namespace="medsynth", is_install=True)
    return [doc for text in rendered.values() for doc in yaml.safe_load_all(text) if doc]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _closed(schema: dict) -> dict:
    """A CRD's openAPIV3Schema as the API server applies it with strict field validation: unknown
    fields are errors wherever the schema lists properties and does not preserve unknown fields."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
                node.setdefault("additionalProperties", False)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


@pytest.fixture(scope="module")
def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) → the vendored CRD's schema for that version."""
    schemas = {}
    for path in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            api = f"{crd['spec']['group']}/{version['name']}"
            schemas[(api, crd["spec"]["names"]["kind"])] = _closed(version["schema"]["openAPIV3Schema"])
    return schemas


def validate(doc: dict, crd_schemas: dict) -> None:
    key = (doc["apiVersion"], doc["kind"])
    if key in crd_schemas:
        # no metaschema check: CRDs carry Go regular expressions (inline flags) Python's re refuses
        jsonschema.Draft7Validator(crd_schemas[key]).validate(doc)
    else:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


VALUE_SETS = {
    "default": {},
    "gpu": GPU_VALUES,
    "hpa-on-lag": {"autoscaling": {"mode": "hpa", "hpa": {"metric": "lag"}}},
    "trial-backends-dicom": {"kafka": {"deploy": True}, "store": {"deploy": True},
                             "services": {"ingest": {"dicom": {"enabled": True, "peers": [{"ae_title": "PACS", "dataset": "in"}]}}}},
}


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_chart_lints_and_every_manifest_is_valid(values: dict, crd_schemas: dict) -> None:
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBERNETES}.0")
    assert not report["errors"] and all(m["severity"] < 2 for m in report["messages"]), report
    docs = render(values)
    assert {"Deployment", "Service", "NetworkPolicy", "PodDisruptionBudget", "Job", "Pod"} <= {d["kind"] for d in docs}
    for doc in docs:
        validate(doc, crd_schemas)


def test_the_validators_refuse_what_a_cluster_would(crd_schemas: dict) -> None:
    """The checks above can fail: a misspelt field, in a core manifest and in a CRD's."""
    docs = render(GPU_VALUES)
    deployment = copy.deepcopy(next(iter(by_kind(docs, "Deployment").values())))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment, crd_schemas)
    scaled = copy.deepcopy(next(iter(by_kind(docs, "ScaledObject").values())))
    scaled["spec"]["maxReplicas"] = 4
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled, crd_schemas)
    monitor = copy.deepcopy(next(iter(by_kind(docs, "ServiceMonitor").values())))
    monitor["spec"]["endpoints"][0]["bearerTokenFile"] = 7
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor, crd_schemas)


def test_bad_values_are_refused_by_the_schema() -> None:
    chart = helm.Chart.load(CHART)
    for bad in ({"existingSecret": ""}, {"autoscaling": {"mode": "sometimes"}}, {"kafka": {"bootstrap": "kafka"}},
                {"settings": {"MEDSYNTH_S3_SECRET_KEY": "in-values"}}, {"services": {"trainer": {"kinds": ["train"]}}},
                {"gpu": {"enabled": "yes"}}, {"servcies": {}}):
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(bad)


def test_a_deployment_and_service_per_service_with_probes_and_the_settings() -> None:
    docs = render()
    deployments, services = by_kind(docs, "Deployment"), by_kind(docs, "Service")
    assert set(deployments) == {f"medsynth-{s}" for s in SERVICES} and set(services) == set(deployments)
    for name in SERVICES:
        pod = deployments[f"medsynth-{name}"]["spec"]["template"]["spec"]
        main = next(c for c in pod["containers"] if c["name"] == name)
        assert main["image"] == f"medsynth/{name}:0.1.0"
        assert main["readinessProbe"]["httpGet"]["path"] == "/readyz" and main["livenessProbe"]["httpGet"]["path"] == "/healthz"
        env = {e["name"]: e for e in main["env"]}
        assert env["MEDSYNTH_ENVIRONMENT"]["value"] == "production" and env["MEDSYNTH_STORE"]["value"] == "s3"
        for secret in ("MEDSYNTH_S3_ACCESS_KEY", "MEDSYNTH_S3_SECRET_KEY", "MEDSYNTH_METRICS_TOKEN"):
            assert env[secret]["valueFrom"]["secretKeyRef"] == {"name": "medsynth-credentials", "key": secret}
    assert not by_kind(docs, "Secret"), "credentials come from existingSecret, never from the chart"


def test_gpu_stages_on_the_gpu_pool_and_cpu_stages_on_the_default_pool() -> None:
    for values, gpu_on in (({}, False), (GPU_VALUES, True)):
        deployments = by_kind(render(values), "Deployment")
        for name in SERVICES:
            pod = deployments[f"medsynth-{name}"]["spec"]["template"]["spec"]
            on_gpu = gpu_on and name in GPU_STAGES
            assert ("nodeSelector" in pod) is on_gpu, name
            gpu_containers = [c for c in pod["containers"] if "nvidia.com/gpu" in c["resources"].get("limits", {})]
            if not on_gpu:
                assert not gpu_containers and "tolerations" not in pod, name
                continue
            assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
            (gpu,) = gpu_containers
            assert gpu["name"] == ("torchserve" if name == "sampler" else name) and gpu["image"].endswith("-cuda")
            assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1 and gpu["startupProbe"]["failureThreshold"] * 10 >= 900
            shm = next(v for v in pod["volumes"] if v["name"] == "shm")
            assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
            assert {"name": "shm", "mountPath": "/dev/shm"} in gpu["volumeMounts"]


def test_the_sampler_shares_its_model_store_and_torchserve_keys_in_its_pod() -> None:
    pod = by_kind(render(), "Deployment")["medsynth-sampler"]["spec"]["template"]["spec"]
    sampler, torchserve = (next(c for c in pod["containers"] if c["name"] == n) for n in ("sampler", "torchserve"))
    env = {e["name"]: e.get("value") for e in sampler["env"]}
    assert env["MEDSYNTH_TORCHSERVE_INFERENCE_URL"] == "http://127.0.0.1:8080"
    assert Path(env["MEDSYNTH_TORCHSERVE_KEY_FILE"]).parent == Path(torchserve["workingDir"])
    mounts = {c["name"]: {m["name"]: m["mountPath"] for m in c["volumeMounts"]} for c in (sampler, torchserve)}
    assert mounts["sampler"]["models"] == mounts["torchserve"]["models"] == env["MEDSYNTH_TORCHSERVE_MODEL_STORE"]
    assert mounts["torchserve"]["torchserve-work"] == torchserve["workingDir"]
    config = by_kind(render(), "ConfigMap")["medsynth-torchserve"]["data"]["config.properties"]
    props = dict(line.split("=", 1) for line in config.split())
    assert props["disable_token_authorization"] == "false" and props["model_store"] == "/models"
    assert props["inference_address"].startswith("http://127.0.0.1:")  # the sampler is its one client


def test_torch_threads_follow_each_containers_cpu_request() -> None:
    """PyTorch would start a thread per node core in every pod; each container gets its CPU request instead
    (rounded up, at least 1), including a request changed in the values."""
    values = {"services": {"segmenter": {"resources": {"requests": {"cpu": "3500m", "memory": "8Gi"}}}},
              "torchserve": {"resources": {"requests": {"cpu": "250m", "memory": "4Gi"}}}}
    deployments = by_kind(render(values), "Deployment")
    threads = {}
    for deployment in deployments.values():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            threads[container["name"]] = next(e["value"] for e in container["env"] if e["name"] == "OMP_NUM_THREADS")
    assert threads == {"api": "1", "ingest": "1", "trainer": "2", "sampler": "1", "torchserve": "1", "segmenter": "4", "evaluator": "1"}


def test_restricted_pod_security_everywhere() -> None:
    for values in VALUE_SETS.values():
        for doc in render(values):
            spec = {"Deployment": lambda d: d["spec"]["template"]["spec"], "Job": lambda d: d["spec"]["template"]["spec"],
                    "Pod": lambda d: d["spec"]}.get(doc["kind"], lambda d: None)(doc)
            if spec is None:
                continue
            name = doc["metadata"]["name"]
            assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
            assert spec["automountServiceAccountToken"] is False, name
            for c in spec["containers"]:
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], (name, c["name"])
                trial_kafka = name == "medsynth-kafka"  # the trial broker's image writes its config at start
                assert sc["readOnlyRootFilesystem"] is not trial_kafka, (name, c["name"])
                assert "limits" in c["resources"] and "memory" in c["resources"]["limits"], (name, c["name"])


def test_workers_scale_on_their_groups_lag_over_the_topics_they_consume() -> None:
    scaled = by_kind(render(), "ScaledObject")
    assert set(scaled) == {f"medsynth-{w}" for w in WORKERS}
    for worker in WORKERS:
        spec = scaled[f"medsynth-{worker}"]["spec"]
        assert spec["scaleTargetRef"]["name"] == f"medsynth-{worker}" and spec["maxReplicaCount"] == 4
        topics = {t["metadata"]["topic"] for t in spec["triggers"]}
        assert topics == {command_topic("medsynth", kind) for kind in handlers_for(worker)}, worker  # what it really consumes
        assert {t["metadata"]["consumerGroup"] for t in spec["triggers"]} == {f"medsynth.{worker}"}  # the worker's group
        assert all(t["type"] == "kafka" and t["metadata"]["bootstrapServers"] == "kafka:9092" for t in spec["triggers"])
    deployments = by_kind(render(), "Deployment")
    assert all("replicas" not in deployments[f"medsynth-{w}"]["spec"] for w in WORKERS)  # the autoscaler owns them
    hpas = by_kind(render(VALUE_SETS["hpa-on-lag"]), "HorizontalPodAutoscaler")
    assert set(hpas) == {f"medsynth-{w}" for w in WORKERS}
    metric = hpas["medsynth-trainer"]["spec"]["metrics"][0]["external"]["metric"]
    assert metric == {"name": "medsynth_consumer_lag", "selector": {"matchLabels": {"group": "medsynth.trainer"}}}
    assert not by_kind(render({"autoscaling": {"mode": "none"}}), "ScaledObject")


def test_network_policies_expose_only_api_and_ingest() -> None:
    policies = by_kind(render(VALUE_SETS["trial-backends-dicom"]), "NetworkPolicy")
    assert set(policies) == {f"medsynth-{s}" for s in SERVICES}
    for name in SERVICES:
        spec = policies[f"medsynth-{name}"]["spec"]
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        (ingress,) = spec["ingress"]
        if name in ("api", "ingest"):
            assert "from" not in ingress  # reachable from outside (ingressFrom narrows it)
        else:
            assert ingress["from"] and all("ipBlock" not in peer for peer in ingress["from"])  # Prometheus and helm test only
        egress_ports = {p["port"] for rule in spec["egress"] for p in rule["ports"]}
        assert egress_ports == {53, 9092, 9000}, (name, egress_ports)  # DNS, Kafka, the store; TorchServe is in-pod
        targets = [rule["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for rule in spec["egress"] if "to" in rule]
        assert targets == ["kafka", "minio"]  # the trial backends by selector, not any address
    assert {p["port"] for p in policies["medsynth-ingest"]["spec"]["ingress"][0]["ports"]} == {"http", "dicom"}
    bucket = by_kind(render(VALUE_SETS["trial-backends-dicom"]), "Job")["medsynth-minio-bucket-1"]
    assert "annotations" not in bucket["metadata"]  # not a hook: `helm install --wait` waits on services that need the bucket
    jwks = {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [{"port": 443, "protocol": "TCP"}]}
    policies = by_kind(render({"networkPolicy": {"publicEgress": [jwks]}}), "NetworkPolicy")
    for name in SERVICES:  # the OIDC issuer's JWKS: api and ingest check tokens, the workers reach nothing else
        assert (jwks in policies[f"medsynth-{name}"]["spec"]["egress"]) is (name in ("api", "ingest")), name


def test_monitoring_pdbs_topics_and_helm_test() -> None:
    docs = render(GPU_VALUES)
    (monitor,) = by_kind(docs, "ServiceMonitor").values()
    http = next(e for e in monitor["spec"]["endpoints"] if e["port"] == "http")
    assert http["authorization"]["credentials"] == {"name": "medsynth-credentials", "key": "MEDSYNTH_METRICS_TOKEN"}
    assert sorted(monitor["spec"]["selector"]["matchExpressions"][0]["values"]) == sorted(SERVICES)
    (rule,) = by_kind(docs, "PrometheusRule").values()
    alerts = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    assert rule["spec"] == alerts
    dashboards = {name for name in by_kind(docs, "ConfigMap") if "-dashboard-" in name}
    assert dashboards == {f"medsynth-dashboard-{p.stem}" for p in (CHART / "files" / "dashboards").glob("*.json")}
    assert set(by_kind(docs, "PodDisruptionBudget")) == {f"medsynth-{s}" for s in SERVICES}
    topics = by_kind(docs, "Job")["medsynth-topics"]
    assert topics["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    assert topics["spec"]["template"]["spec"]["containers"][0]["command"] == ["medsynth", "topics"]
    (test_pod,) = by_kind(docs, "Pod").values()
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    urls = test_pod["spec"]["containers"][0]["command"][3:]
    assert sorted(urls) == sorted(f"http://medsynth-{s}:8000/readyz" for s in SERVICES)
