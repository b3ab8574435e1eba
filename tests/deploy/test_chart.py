"""helm/medsynth rendered offline (helm-python-sdk: Helm's own engine, no cluster) for its default values,
the GPU-pool values and a set with every knob on, each as a plain cluster sees it (no CRDs) and as one
with KEDA and the Prometheus Operator does; every manifest validated against the Kubernetes schemas
(kubernetes-validate, strict) and the KEDA / Prometheus Operator CRD schemas vendored in crds/, and the
rules the deployment relies on read from what was rendered: the settings each container gets load as a
valid configuration, and the first-admin-key command the install notes print works in a pod's environment."""

from __future__ import annotations

import copy
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from helm_python import _native
from platform_fixtures import S3Server
from tls_certs import make_pki

from medsynth.auth.keys import ApiKeys
from medsynth.bus.client import Bus
from medsynth.bus.messages import JobKind
from medsynth.bus.topics import command_topic
from medsynth.core.settings import Settings
from medsynth.handlers import handlers_for
from medsynth.local.cli import build_parser
from medsynth.store import open_store
from test_images import SERVICES

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "medsynth"
CRDS = Path(__file__).parent / "crds"
KUBERNETES = "1.31"  # the oldest minor the chart is validated for; kubeVersion in Chart.yaml allows >= 1.27
GPU_STAGES = {"trainer", "segmenter", "sampler"}  # the sampler through its TorchServe container
WORKERS = {"trainer", "preparer", "sampler", "segmenter", "evaluator"}
GPU_VALUES = yaml.safe_load((CHART / "values-gpu.yaml").read_text())
#: What a cluster with KEDA and the Prometheus Operator serves (Helm fills .Capabilities.APIVersions on install
#: with group/version and group/version/Kind); a plain cluster serves neither.
CRD_APIS = ("keda.sh/v1alpha1", "keda.sh/v1alpha1/ScaledObject", "keda.sh/v1alpha1/TriggerAuthentication",
            "monitoring.coreos.com/v1", "monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PrometheusRule")
CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/")


def render_files(values: dict | None = None, api_versions: tuple[str, ...] = ()) -> dict[str, str]:
    """Template path → rendered text, as `helm install` renders for a cluster serving ``api_versions`` besides
    the built-in APIs; the values checked against the schema first, as Helm does."""
    chart = helm.Chart.load(CHART)
    chart.validate_schema(values or {})
    opts = {"name": "medsynth", "namespace": "medsynth", "is_install": True, "kube_version": f"v{KUBERNETES}.0",
            "api_versions": list(api_versions)}
    # helm-python's Chart.render takes no api_versions; its native call does (the Go SDK's install options)
    return json.loads(_native.call_string("helm_render", chart._raw(), json.dumps(values or {}), json.dumps(opts)))


def render(values: dict | None = None, api_versions: tuple[str, ...] = ()) -> list[dict]:
    files = render_files(values, api_versions)
    return [doc for path, text in files.items() if not path.endswith("NOTES.txt") for doc in yaml.safe_load_all(text) if doc]


def notes(values: dict | None = None, api_versions: tuple[str, ...] = ()) -> str:
    return render_files(values, api_versions)["medsynth/templates/NOTES.txt"]


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


#: Every knob of the chart on: what a real cluster with Vault, a mesh, an internal CA and SASL_SSL brokers sets.
EVERYTHING = {
    "image": {"registry": "registry.example.org/", "repository": "imaging/medsynth", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "regcred"}],
    "serviceAccount": {"create": True, "name": "medsynth-runner", "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/medsynth"}},
    "podAnnotations": {"vault.hashicorp.com/agent-inject": "true"},
    "podLabels": {"team": "imaging"},
    "extraEnv": [{"name": "MEDSYNTH_OIDC_ISSUER", "value": "https://id.example.org/realms/x"},
                 {"name": "MEDSYNTH_OIDC_AUDIENCE", "value": "medsynth"},
                 {"name": "MEDSYNTH_OIDC_JWKS_URL", "value": "https://id.example.org/realms/x/certs"}],
    "extraEnvFrom": [{"secretRef": {"name": "medsynth-extra"}}],
    "extraVolumes": [{"name": "internal-ca", "configMap": {"name": "internal-ca"}}],
    "extraVolumeMounts": [{"name": "internal-ca", "mountPath": "/etc/ssl/internal", "readOnly": True}],
    "kafka": {"bootstrap": "b-1.kafka.example.org:9093,b-2.kafka.example.org:9093", "port": 9093,
              "security": {"protocol": "SASL_SSL",
                           "sasl": {"mechanism": "SCRAM-SHA-512", "username": "medsynth", "passwordSecret": {"name": "kafka-user", "key": "password"}},
                           "tls": {"ca": {"configMap": "kafka-ca", "key": "ca.crt"}, "clientCert": {"secret": "kafka-client-tls"}}}},
    "store": {"endpoint": "s3.storage.example.org:443", "port": 443, "secure": True, "ca": {"secret": "s3-ca", "key": "bundle.pem"}},
    "services": {
        "api": {"image": {"repository": "imaging/medsynth-api-patched", "tag": "0.1.0-p1"},
                "podAnnotations": {"sidecar.istio.io/inject": "true"},
                "ingress": {"enabled": True, "className": "nginx", "annotations": {"cert-manager.io/cluster-issuer": "internal"},
                            "hosts": [{"host": "medsynth.example.org"}],
                            "tls": [{"secretName": "medsynth-api-tls", "hosts": ["medsynth.example.org"]}]}},
        "ingest": {"ingress": {"enabled": True, "className": "nginx",
                               "annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "0"},
                               "hosts": [{"host": "ingest.example.org", "paths": [{"path": "/", "pathType": "Prefix"}]}],
                               "tls": [{"secretName": "medsynth-ingest-tls", "hosts": ["ingest.example.org"]}]}},
        "trainer": {"extraEnv": [{"name": "MEDSYNTH_DEVICE", "value": "cuda"}], "podLabels": {"gpu": "yes"}},
    },
    "autoscaling": {"http": {"enabled": True}},
    "networkPolicy": {"ingressFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]},
}

VALUE_SETS = {
    "default": {},
    "gpu": GPU_VALUES,
    "hpa-on-lag": {"autoscaling": {"mode": "hpa", "hpa": {"metric": "lag"}}},
    "trial-backends-dicom": {"kafka": {"deploy": True}, "store": {"deploy": True},
                             "services": {"ingest": {"dicom": {"enabled": True, "peers": [{"ae_title": "PACS", "dataset": "in"}]}}}},
    "everything": EVERYTHING,
    "no-preparer": {"services": {"preparer": {"enabled": False}, "trainer": {"kinds": ["prepare-dataset", "train-generator"]}}},
}
CLUSTERS = {"plain": (), "keda-and-prometheus-operator": CRD_APIS}


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_chart_lints(values: dict) -> None:
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBERNETES}.0")
    assert not report["errors"] and all(m["severity"] < 2 for m in report["messages"]), report


@pytest.mark.parametrize("cluster", CLUSTERS.values(), ids=CLUSTERS.keys())
@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_manifest_is_valid_for_the_cluster(values: dict, cluster: tuple, crd_schemas: dict) -> None:
    docs = render(values, cluster)
    assert {"Deployment", "Service", "NetworkPolicy", "PodDisruptionBudget", "Job", "Pod", "ServiceAccount"} <= {d["kind"] for d in docs}
    for doc in docs:
        validate(doc, crd_schemas)


@pytest.mark.parametrize("values", [{}, GPU_VALUES, EVERYTHING], ids=["default", "gpu", "everything"])
def test_a_plain_cluster_gets_no_object_of_a_crd_it_lacks(values: dict) -> None:
    """A cluster without KEDA and the Prometheus Operator accepts the install: no ScaledObject, TriggerAuthentication,
    ServiceMonitor or PrometheusRule (it would refuse them), HPAs for the workers instead; with the CRDs there, the
    same values give the KEDA and monitoring objects."""
    plain = render(values)
    assert not [d["kind"] for d in plain if d["apiVersion"].startswith(CRD_GROUPS)]
    assert {f"medsynth-{w}" for w in WORKERS} <= set(by_kind(plain, "HorizontalPodAutoscaler"))
    equipped = render(values, CRD_APIS)
    assert set(by_kind(equipped, "ScaledObject")) == {f"medsynth-{w}" for w in WORKERS}
    assert {f"medsynth-{w}" for w in WORKERS}.isdisjoint(by_kind(equipped, "HorizontalPodAutoscaler"))
    assert by_kind(equipped, "ServiceMonitor") and by_kind(equipped, "PrometheusRule")
    # `helm template --api-versions keda.sh/v1alpha1` (the group/version alone) is enough too
    assert by_kind(render(values, ("keda.sh/v1alpha1", "monitoring.coreos.com/v1")), "ScaledObject")


def test_crd_objects_follow_the_values_when_set_explicitly() -> None:
    """keda / true render them without the capability (`helm template` for a GitOps tool that passes none);
    hpa / false leave them out where the cluster has the CRDs."""
    forced = render({"autoscaling": {"mode": "keda"}, "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}})
    assert by_kind(forced, "ScaledObject") and by_kind(forced, "ServiceMonitor") and by_kind(forced, "PrometheusRule")
    off = render({"autoscaling": {"mode": "hpa"}, "metrics": {"serviceMonitor": {"enabled": False}, "prometheusRule": {"enabled": False}}}, CRD_APIS)
    assert not [d for d in off if d["apiVersion"].startswith(CRD_GROUPS)]
    assert not by_kind(render({"autoscaling": {"mode": "none"}}, CRD_APIS), "HorizontalPodAutoscaler")


def test_the_validators_refuse_what_a_cluster_would(crd_schemas: dict) -> None:
    """The checks above can fail: a misspelt field, in a core manifest and in a CRD's."""
    docs = render(EVERYTHING, CRD_APIS)
    deployment = copy.deepcopy(next(iter(by_kind(docs, "Deployment").values())))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment, crd_schemas)
    ingress = copy.deepcopy(by_kind(docs, "Ingress")["medsynth-api"])
    ingress["spec"]["tls"][0]["secret"] = ingress["spec"]["tls"][0].pop("secretName")
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(ingress, crd_schemas)
    scaled = copy.deepcopy(next(iter(by_kind(docs, "ScaledObject").values())))
    scaled["spec"]["maxReplicas"] = 4
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled, crd_schemas)
    auth = copy.deepcopy(next(iter(by_kind(docs, "TriggerAuthentication").values())))
    auth["spec"]["secretTargetRef"][0]["secret"] = auth["spec"]["secretTargetRef"][0].pop("name")
    with pytest.raises(jsonschema.ValidationError):
        validate(auth, crd_schemas)
    monitor = copy.deepcopy(next(iter(by_kind(docs, "ServiceMonitor").values())))
    monitor["spec"]["endpoints"][0]["bearerTokenFile"] = 7
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor, crd_schemas)


BAD_VALUES = [
    {"existingSecret": ""}, {"autoscaling": {"mode": "sometimes"}}, {"kafka": {"bootstrap": "kafka"}},
    {"settings": {"MEDSYNTH_S3_SECRET_KEY": "in-values"}}, {"services": {"trainer": {"kinds": ["train"]}}},
    {"gpu": {"enabled": "yes"}}, {"servcies": {}},
    # the new keys, misspelt or wrong
    {"serviceAcount": {"create": True}}, {"serviceAccount": {"annotation": {}}}, {"podAnotations": {}},
    {"podLabels": {"team": 7}}, {"extraEnv": [{"name": "X", "vaule": "y"}]}, {"extraEnv": [{"value": "y"}]},
    {"extraEnvFrom": [{"secretRefs": {"name": "x"}}]}, {"extraVolumeMounts": [{"name": "x"}]},
    {"extraVolumes": [{"name": "Bad_Name", "emptyDir": {}}]}, {"imagePullSecrets": ["regcred"]},
    {"image": {"repository": "Medsynth/"}}, {"services": {"api": {"image": {"repo": "x"}}}},
    {"services": {"api": {"image": {"tag": "latest"}}}}, {"services": {"trainer": {"podAnotations": {}}}},
    {"services": {"api": {"ingress": {"enabled": True, "hosts": [{"hots": "x.example.org"}]}}}},
    {"services": {"api": {"ingress": {"enabled": True, "hosts": []}}}},
    {"services": {"ingest": {"ingress": {"enabled": True, "hosts": [{"host": "x.example.org"}], "tls": [{"hosts": ["x"]}]}}}},
    {"services": {"api": {"ingress": {"enabled": True, "hosts": [{"host": "x.example.org", "paths": [{"path": "/", "pathType": "Regex"}]}]}}}},
    {"services": {"preparer": {"kinds": ["train-generator"]}}}, {"services": {"sampler": {"kinds": ["evaluate"]}}},
    {"services": {"trainer": {"minReplicas": -1}}}, {"services": {"api": {"enabled": False}}},
    {"kafka": {"security": {"protocol": "TLS"}}}, {"kafka": {"security": {"protocol": "SASL_SSL"}}},
    {"kafka": {"security": {"protocol": "SASL_SSL", "sasl": {"username": "u", "passwordSecret": {"name": ""}}}}},
    {"kafka": {"security": {"sasl": {"mechanism": "GSSAPI"}}}}, {"kafka": {"security": {"tls": {"caFile": "/x"}}}},
    {"kafka": {"security": {"tls": {"ca": {"secret": "a", "configMap": "b"}}}}}, {"store": {"ca": {"secrets": "x"}}},
    {"settings": {"MEDSYNTH_KAFKA_SASL_PASSWORD": "in-values"}}, {"autoscaling": {"http": {"minReplicas": 0}}},
    {"metrics": {"serviceMonitor": {"enabled": "yes"}}}, {"torchserve": {"imag": {}}},
]


@pytest.mark.parametrize("bad", BAD_VALUES, ids=[json.dumps(v)[:60] for v in BAD_VALUES])
def test_bad_values_are_refused_by_the_schema(bad: dict) -> None:
    with pytest.raises(helm.HelmValuesError):
        helm.Chart.load(CHART).validate_schema(bad)


def test_the_new_keys_pass_and_helm_checks_the_schema_itself() -> None:
    chart = helm.Chart.load(CHART)
    for values in VALUE_SETS.values():
        chart.validate_schema(values)
    with pytest.raises(helm.HelmValuesError):  # Helm's own render refuses a typo before any template runs
        chart.render({"serviceAcount": {}}, name="medsynth")


INCONSISTENT = {
    "no deployed worker consumes prepare-dataset": {"services": {"preparer": {"enabled": False}}},
    "both preparer and trainer consume prepare-dataset": {"services": {"trainer": {"kinds": ["prepare-dataset", "train-generator"]}}},
    "the trial broker is plaintext": {"kafka": {"deploy": True, "security": {"protocol": "SSL"}}},
    "store.ca is for https": {"store": {"ca": {"secret": "s3-ca"}}},
    "minReplicas 3 is above maxReplicas 2": {"services": {"evaluator": {"minReplicas": 3, "maxReplicas": 2}}},
}


@pytest.mark.parametrize("reason", INCONSISTENT)
def test_inconsistent_values_fail_the_render_with_a_reason(reason: str) -> None:
    """What the schema cannot see: each job kind consumed by exactly one deployed worker (none: its jobs would wait
    forever; two: each would run every job), no TLS on the trial backends, a CA bundle only with https."""
    with pytest.raises(helm.HelmError, match=reason):
        render(INCONSISTENT[reason])


def test_a_deployment_and_service_per_service_with_probes_and_the_settings() -> None:
    docs = render()
    deployments, services = by_kind(docs, "Deployment"), by_kind(docs, "Service")
    assert set(deployments) == {f"medsynth-{s}" for s in SERVICES} and set(services) == set(deployments)
    for name in SERVICES:
        pod = deployments[f"medsynth-{name}"]["spec"]["template"]["spec"]
        main = next(c for c in pod["containers"] if c["name"] == name)
        assert main["image"] == f"medsynth/{name}:0.1.0"
        assert pod["serviceAccountName"] == "medsynth" and "imagePullSecrets" not in pod
        assert main["readinessProbe"]["httpGet"]["path"] == "/readyz" and main["livenessProbe"]["httpGet"]["path"] == "/healthz"
        env = {e["name"]: e for e in main["env"]}
        assert env["MEDSYNTH_ENVIRONMENT"]["value"] == "production" and env["MEDSYNTH_STORE"]["value"] == "s3"
        for secret in ("MEDSYNTH_S3_ACCESS_KEY", "MEDSYNTH_S3_SECRET_KEY", "MEDSYNTH_METRICS_TOKEN"):
            assert env[secret]["valueFrom"]["secretKeyRef"] == {"name": "medsynth-credentials", "key": secret}
    assert not by_kind(docs, "Secret"), "credentials come from existingSecret, never from the chart"


def _device_env(container: dict) -> str:
    (value,) = [e["value"] for e in container["env"] if e["name"] == "MEDSYNTH_DEVICE"]
    return value


def test_gpu_stages_on_the_gpu_pool_and_cpu_stages_on_the_default_pool() -> None:
    for values, gpu_on in (({}, False), (GPU_VALUES, True)):
        deployments = by_kind(render(values), "Deployment")
        for name in SERVICES:
            pod = deployments[f"medsynth-{name}"]["spec"]["template"]["spec"]
            on_gpu = gpu_on and name in GPU_STAGES
            # a container that holds a GPU must use it (MEDSYNTH_DEVICE=cuda fails loudly without one), never auto
            for container in pod["containers"]:
                holds_gpu = "nvidia.com/gpu" in container["resources"].get("limits", {})
                assert _device_env(container) == ("cuda" if holds_gpu else "cpu"), (name, container["name"])
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


def test_torchserve_hands_its_gpu_to_the_workers_only_on_the_gpu_pool() -> None:
    """TorchServe gives each worker a gpu_id for the GPUs its container holds (number_of_gpu); its MEDSYNTH_DEVICE
    makes the handler refuse a worker without one on the GPU pool, instead of sampling on the CPU."""
    for values, gpus, device in (({}, "0", "cpu"), (GPU_VALUES, "1", "cuda"), ({**GPU_VALUES, "gpu": {**GPU_VALUES["gpu"], "count": 2}}, "2", "cuda")):
        docs = render(values)
        props = dict(line.split("=", 1) for line in by_kind(docs, "ConfigMap")["medsynth-torchserve"]["data"]["config.properties"].split())
        pod = by_kind(docs, "Deployment")["medsynth-sampler"]["spec"]["template"]["spec"]
        torchserve, sampler = (next(c for c in pod["containers"] if c["name"] == n) for n in ("torchserve", "sampler"))
        assert props["number_of_gpu"] == gpus and _device_env(torchserve) == device
        assert str(torchserve["resources"].get("limits", {}).get("nvidia.com/gpu", 0)) == gpus
        env = {e["name"]: e.get("value") for e in sampler["env"]}
        # diffusion requests sized for the TorchServe's device (4 samples at 1,000 steps on a CPU, 64 on a GPU);
        # at most two generators (workers, CUDA contexts) stay loaded
        assert env["MEDSYNTH_SAMPLER_PASSES_PER_REQUEST"] == ("65536" if device == "cuda" else "4096")
        assert env["MEDSYNTH_SAMPLER_MAX_MODELS"] == "2"


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
    assert threads == {"api": "1", "ingest": "1", "trainer": "2", "preparer": "1", "sampler": "1", "torchserve": "1",
                       "segmenter": "4", "evaluator": "1"}


def test_restricted_pod_security_everywhere() -> None:
    for values in VALUE_SETS.values():
        for doc in render(values, CRD_APIS):
            spec = {"Deployment": lambda d: d["spec"]["template"]["spec"], "Job": lambda d: d["spec"]["template"]["spec"],
                    "Pod": lambda d: d["spec"]}.get(doc["kind"], lambda d: None)(doc)
            if spec is None:
                continue
            name = doc["metadata"]["name"]
            assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
            assert spec["automountServiceAccountToken"] is False, name  # no token unless serviceAccount.automountToken
            for c in spec["containers"]:
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], (name, c["name"])
                trial_kafka = name == "medsynth-kafka"  # the trial broker's image writes its config at start
                assert sc["readOnlyRootFilesystem"] is not trial_kafka, (name, c["name"])
                assert "limits" in c["resources"] and "memory" in c["resources"]["limits"], (name, c["name"])


def _worker_kinds(deployment: dict) -> list[str]:
    main = deployment["spec"]["template"]["spec"]["containers"][0]
    return next(e["value"] for e in main["env"] if e["name"] == "MEDSYNTH_WORKER_KINDS").split(",")


@pytest.mark.parametrize("values", [{}, VALUE_SETS["no-preparer"]], ids=["preparer", "no-preparer"])
def test_each_job_kind_has_one_worker_which_runs_and_scales_on_it(values: dict) -> None:
    """Each worker consumes the kinds of its MEDSYNTH_WORKER_KINDS (what its process then runs: handlers_for), each
    job kind is consumed by one deployed worker, and its KEDA triggers are those kinds' topics read as its group."""
    docs = render(values, CRD_APIS)
    deployments, scaled = by_kind(docs, "Deployment"), by_kind(docs, "ScaledObject")
    consumed: dict[str, str] = {}
    for name, deployment in deployments.items():
        worker = name.removeprefix("medsynth-")
        if worker not in WORKERS:
            continue
        kinds = _worker_kinds(deployment)
        runs = handlers_for(worker, kinds)   # what the worker's process runs with this environment
        assert {k.value for k in runs} == set(kinds), worker
        for kind in kinds:
            assert kind not in consumed, (kind, consumed[kind], worker)
            consumed[kind] = worker
        spec = scaled[name]["spec"]
        assert spec["scaleTargetRef"]["name"] == name and spec["maxReplicaCount"] == 4
        assert {t["metadata"]["topic"] for t in spec["triggers"]} == {command_topic("medsynth", k) for k in runs}, worker
        assert {t["metadata"]["consumerGroup"] for t in spec["triggers"]} == {f"medsynth.{worker}"}  # the worker's group
        assert all(t["type"] == "kafka" and t["metadata"]["bootstrapServers"] == "kafka:9092" for t in spec["triggers"])
        assert "replicas" not in deployment["spec"]  # the autoscaler owns them
    assert set(consumed) == {k.value for k in JobKind}
    assert consumed["prepare-dataset"] == ("trainer" if values else "preparer")
    with pytest.raises(ValueError, match="MEDSYNTH_WORKER_KINDS: the preparer runs prepare-dataset; not evaluate"):
        handlers_for("preparer", ["evaluate"])


def test_prepare_dataset_runs_off_the_gpu_pool() -> None:
    deployments = by_kind(render(GPU_VALUES), "Deployment")
    trainer, preparer = (deployments[f"medsynth-{n}"]["spec"]["template"]["spec"] for n in ("trainer", "preparer"))
    assert "nvidia.com/gpu" in trainer["containers"][0]["resources"]["limits"]
    assert _worker_kinds(deployments["medsynth-trainer"]) == ["train-generator"]
    assert _worker_kinds(deployments["medsynth-preparer"]) == ["prepare-dataset"]
    assert "nodeSelector" not in preparer and "tolerations" not in preparer
    assert "nvidia.com/gpu" not in preparer["containers"][0]["resources"]["limits"]
    assert preparer["containers"][0]["image"] == "medsynth/preparer:0.1.0"  # the CPU image


def test_gpu_workers_scale_to_zero_with_keda_and_keep_one_replica_without() -> None:
    scaled = by_kind(render(GPU_VALUES, CRD_APIS), "ScaledObject")
    minimum = {name.removeprefix("medsynth-"): s["spec"]["minReplicaCount"] for name, s in scaled.items()}
    assert minimum == {"trainer": 0, "segmenter": 0, "sampler": 0, "preparer": 1, "evaluator": 1}
    assert all(s["spec"]["fallback"]["replicas"] == s["spec"]["minReplicaCount"] for s in scaled.values())
    assert all(t["metadata"]["activationLagThreshold"] == "0" for s in scaled.values() for t in s["spec"]["triggers"])
    hpas = by_kind(render(GPU_VALUES), "HorizontalPodAutoscaler")
    assert {h["spec"]["minReplicas"] for h in hpas.values()} == {1}  # an HPA cannot scale to zero
    text = notes(GPU_VALUES)
    assert "HPAs (cpu) - the cluster has no KEDA" in text
    for worker in GPU_STAGES:
        assert f"WARNING: {worker} asks for minReplicas 0 (scale to zero on an empty queue), which needs KEDA" in text
    assert "WARNING" not in notes(GPU_VALUES, CRD_APIS) and "KEDA ScaledObjects" in notes(GPU_VALUES, CRD_APIS)


def test_hpa_fallback_on_cpu_or_on_the_lag_metric_and_for_api_and_ingest() -> None:
    hpas = by_kind(render(VALUE_SETS["hpa-on-lag"], CRD_APIS), "HorizontalPodAutoscaler")  # hpa asked for, KEDA present
    assert set(hpas) == {f"medsynth-{w}" for w in WORKERS}
    metric = hpas["medsynth-trainer"]["spec"]["metrics"][0]["external"]["metric"]
    assert metric == {"name": "medsynth_consumer_lag", "selector": {"matchLabels": {"group": "medsynth.trainer"}}}
    cpu = by_kind(render(), "HorizontalPodAutoscaler")["medsynth-evaluator"]["spec"]["metrics"][0]["resource"]
    assert cpu == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}
    assert by_kind(render(), "Deployment")["medsynth-api"]["spec"]["replicas"] == 2  # fixed, unless autoscaling.http
    docs = render({"autoscaling": {"http": {"enabled": True}}})
    assert "replicas" not in by_kind(docs, "Deployment")["medsynth-api"]["spec"]
    api = by_kind(docs, "HorizontalPodAutoscaler")["medsynth-api"]["spec"]
    assert (api["minReplicas"], api["maxReplicas"]) == (2, 6) and api["metrics"][0]["resource"]["name"] == "cpu"
    fixed = by_kind(render({"autoscaling": {"mode": "none"}, "services": {"evaluator": {"replicas": 0}}}), "Deployment")
    assert fixed["medsynth-evaluator"]["spec"]["replicas"] == 0 and fixed["medsynth-trainer"]["spec"]["replicas"] == 1


def _medsynth_pods(docs: list[dict]) -> dict[str, dict]:
    """Pod templates running medsynth code: the services and the topics Job."""
    pods = {n: d["spec"]["template"] for n, d in by_kind(docs, "Deployment").items() if n.removeprefix("medsynth-") in SERVICES}
    pods["medsynth-topics"] = by_kind(docs, "Job")["medsynth-topics"]["spec"]["template"]
    return pods


def test_every_medsynth_pod_takes_the_clusters_extras() -> None:
    """What a real cluster adds without forking the chart (Vault agent, mesh, internal CA, workload identity):
    service account, pull secrets, pod annotations and labels (global and per service), extra env, envFrom,
    volumes and mounts; images per service."""
    docs = render(EVERYTHING, CRD_APIS)
    (account,) = by_kind(docs, "ServiceAccount").values()
    assert account["metadata"]["name"] == "medsynth-runner" and account["automountServiceAccountToken"] is False
    assert account["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/medsynth"}
    for name, template in _medsynth_pods(docs).items():
        pod, meta = template["spec"], template["metadata"]
        component = name.removeprefix("medsynth-")
        assert pod["serviceAccountName"] == "medsynth-runner" and pod["imagePullSecrets"] == [{"name": "regcred"}], name
        assert meta["annotations"]["vault.hashicorp.com/agent-inject"] == "true" and meta["labels"]["team"] == "imaging", name
        assert ("sidecar.istio.io/inject" in meta["annotations"]) is (component == "api"), name
        assert (meta["labels"].get("gpu") == "yes") is (component == "trainer"), name
        main = pod["containers"][0]
        env = [e["name"] for e in main["env"]]
        assert {"MEDSYNTH_OIDC_ISSUER", "MEDSYNTH_OIDC_AUDIENCE", "MEDSYNTH_OIDC_JWKS_URL"} <= set(env), name
        assert main["envFrom"] == [{"secretRef": {"name": "medsynth-extra"}}], name
        assert {"name": "internal-ca", "mountPath": "/etc/ssl/internal", "readOnly": True} in main["volumeMounts"], name
        assert {"name": "internal-ca", "configMap": {"name": "internal-ca"}} in pod["volumes"], name
        if component == "trainer":  # the service's own extraEnv comes last: it wins over the chart's MEDSYNTH_DEVICE
            assert [e.get("value") for e in main["env"] if e["name"] == "MEDSYNTH_DEVICE"][-1] == "cuda"
        image = "registry.example.org/imaging/medsynth-api-patched:0.1.0-p1" if component in ("api", "topics") else \
            f"registry.example.org/imaging/medsynth/{component}:0.1.0"
        assert main["image"] == image, name
    sampler = by_kind(docs, "Deployment")["medsynth-sampler"]["spec"]["template"]["spec"]["containers"]
    assert sampler[1]["image"] == "registry.example.org/imaging/medsynth/torchserve:0.1.0"


def _resolve_env(container: dict, pod: dict, root: Path, secrets: dict[tuple[str, str], str]) -> dict[str, str]:
    """A container's environment as the kubelet gives it: secretKeyRefs read from ``secrets``; every file a
    variable names checked to be what its volume projects (the right key of the right Secret or ConfigMap),
    and the path moved under ``root`` where the test put that file."""
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    env = {}
    for entry in container["env"]:
        if "valueFrom" in entry:
            ref = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = secrets[(ref["name"], ref["key"])]
            continue
        value = entry["value"]
        if value.startswith("/etc/medsynth/"):
            mount = next(m for m in mounts if value.startswith(m + "/"))
            source = volumes[mounts[mount]]
            projected = source.get("secret") or source.get("configMap")
            item = next(i for i in projected["items"] if i["path"] == value[len(mount) + 1:])
            target = root / (projected.get("secretName") or projected["name"]) / item["key"]
            assert target.is_file(), f"{entry['name']}={value}: projected from {target.parent.name}/{item['key']}, not the file meant"
            value = str(target)
        env[entry["name"]] = value
    return env


def test_kafka_and_store_security_reach_every_container_as_valid_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With SASL_SSL brokers (a CA from a ConfigMap, a client certificate, the password in a Secret) and a store over
    https with its CA in a Secret, every medsynth container's environment, files projected where it says, loads as
    a valid production configuration whose Kafka clients carry TLS and SASL and whose store trusts the CA."""
    pki = make_pki(tmp_path / "pki")
    # the cluster's objects, as files: <Secret or ConfigMap name>/<key>
    for name, key, source in (("kafka-ca", "ca.crt", pki.ca), ("s3-ca", "bundle.pem", pki.ca),
                              ("kafka-client-tls", "tls.crt", pki.client_cert), ("kafka-client-tls", "tls.key", pki.client_key)):
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / key).write_bytes(source.read_bytes())
    secrets = {("medsynth-credentials", "MEDSYNTH_S3_ACCESS_KEY"): "access", ("medsynth-credentials", "MEDSYNTH_S3_SECRET_KEY"): "secret-key",
               ("medsynth-credentials", "MEDSYNTH_METRICS_TOKEN"): "metrics-token", ("kafka-user", "password"): "kafka-password"}
    docs = render(EVERYTHING, CRD_APIS)
    for name, template in _medsynth_pods(docs).items():
        container = template["spec"]["containers"][0]
        env = _resolve_env(container, template["spec"], tmp_path, secrets)
        with monkeypatch.context() as m:
            for key in [k for k in os.environ if k.startswith("MEDSYNTH_")]:
                m.delenv(key)
            for key, value in env.items():
                m.setenv(key, value)
            settings = Settings()
        assert settings.environment.value == "production" and settings.s3_secure and settings.s3_ca_bundle.read_bytes() == pki.ca.read_bytes(), name
        options = Bus(settings).client_options()
        assert options["bootstrap_servers"] == ["b-1.kafka.example.org:9093", "b-2.kafka.example.org:9093"]
        assert (options["security_protocol"], options["sasl_mechanism"], options["sasl_plain_username"], options["sasl_plain_password"]) == \
            ("SASL_SSL", "SCRAM-SHA-512", "medsynth", "kafka-password"), name
        assert Path(options["ssl_cafile"]).read_bytes() == pki.ca.read_bytes() and options["ssl_check_hostname"] is True
        assert Path(options["ssl_certfile"]).read_bytes() == pki.client_cert.read_bytes()
        assert Path(options["ssl_keyfile"]).read_bytes() == pki.client_key.read_bytes()
    # the key file is readable by the service user only through the pod's group (fsGroup), not by others
    trainer = by_kind(docs, "Deployment")["medsynth-trainer"]["spec"]["template"]["spec"]
    client = next(v for v in trainer["volumes"] if v["name"] == "kafka-client")
    assert client["secret"]["defaultMode"] == 0o440 and trainer["securityContext"]["fsGroup"] == 10001


def test_keda_reads_the_lag_with_the_workers_credentials() -> None:
    """KEDA's Kafka scaler connects to the same brokers the same way: TLS and the SASL mechanism in each trigger,
    the user from the worker's environment and the password, CA and client certificate from the same objects."""
    docs = render(EVERYTHING, CRD_APIS)
    (auth,) = by_kind(docs, "TriggerAuthentication").values()
    spec = auth["spec"]
    assert spec["env"] == [{"parameter": "username", "name": "MEDSYNTH_KAFKA_SASL_USERNAME"}]
    refs = {r["parameter"]: (r["name"], r["key"]) for r in spec["secretTargetRef"]}
    assert refs == {"password": ("kafka-user", "password"), "cert": ("kafka-client-tls", "tls.crt"), "key": ("kafka-client-tls", "tls.key")}
    assert spec["configMapTargetRef"] == [{"parameter": "ca", "name": "kafka-ca", "key": "ca.crt"}]
    for scaled in by_kind(docs, "ScaledObject").values():
        worker = scaled["metadata"]["name"]
        main = by_kind(docs, "Deployment")[worker]["spec"]["template"]["spec"]["containers"][0]
        assert any(e["name"] == "MEDSYNTH_KAFKA_SASL_USERNAME" for e in main["env"])  # what env: resolves, in the first container
        for trigger in scaled["spec"]["triggers"]:
            assert trigger["metadata"]["tls"] == "enable" and trigger["metadata"]["sasl"] == "scram_sha512"
            assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    plain = render({}, CRD_APIS)
    assert not by_kind(plain, "TriggerAuthentication")
    assert all("tls" not in t["metadata"] and "authenticationRef" not in t for s in by_kind(plain, "ScaledObject").values()
               for t in s["spec"]["triggers"])


def test_ingress_for_api_and_ingest_with_tls() -> None:
    docs = render(EVERYTHING)
    ingresses, services = by_kind(docs, "Ingress"), by_kind(docs, "Service")
    assert set(ingresses) == {"medsynth-api", "medsynth-ingest"}
    for name, host in (("medsynth-api", "medsynth.example.org"), ("medsynth-ingest", "ingest.example.org")):
        spec = ingresses[name]["spec"]
        assert spec["ingressClassName"] == "nginx" and spec["tls"][0]["hosts"] == [host]
        (rule,) = spec["rules"]
        (path,) = rule["http"]["paths"]
        assert rule["host"] == host and path["path"] == "/" and path["pathType"] == "Prefix"
        backend = path["backend"]["service"]
        assert backend["name"] == name and backend["port"]["name"] in {p["name"] for p in services[name]["spec"]["ports"]}
    assert ingresses["medsynth-ingest"]["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"] == "0"
    assert not by_kind(render(), "Ingress")


def test_notes_say_how_to_reach_the_api_and_make_the_first_admin_key() -> None:
    text = notes()
    assert "kubectl -n medsynth port-forward service/medsynth-api 8000:8000" in text
    command = _first_key_command(text)
    assert command[:7] == ["kubectl", "-n", "medsynth", "exec", "deploy/medsynth-api", "-c", "api"]
    args = build_parser().parse_args(command[command.index("--") + 2:])  # what `medsynth` in the pod parses
    assert (args.action, args.project, args.role) == ("create", "default", "admin") and args.expires_days == 30
    everything = notes(EVERYTHING, CRD_APIS)
    assert "https://medsynth.example.org/" in everything and "https://ingest.example.org/" in everything
    assert "KEDA ScaledObjects" in everything and "ServiceMonitor made, PrometheusRule made" in everything
    assert "over SASL_SSL" in everything and "over https" in everything
    assert "PrometheusRule not made (they need the Prometheus Operator's CRDs" in text


def _first_key_command(text: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if "exec deploy/" in line)
    joined = " ".join(line.strip().rstrip("\\") for line in lines[start:start + 2])
    return shlex.split(joined)


def test_the_first_admin_key_command_works_in_a_pods_environment(seaweedfs: S3Server, tmp_path: Path) -> None:
    """The command the notes print, run with the api container's environment (the chart's settings, the Secret's
    store keys) against a real S3 server: it prints a key that the services accept as the default project's admin."""
    values = {"store": {"endpoint": seaweedfs.endpoint, "bucket": "medsynth-bootstrap"}}
    pod = by_kind(render(values), "Deployment")["medsynth-api"]["spec"]["template"]["spec"]
    secrets = {("medsynth-credentials", "MEDSYNTH_S3_ACCESS_KEY"): seaweedfs.access_key,
               ("medsynth-credentials", "MEDSYNTH_S3_SECRET_KEY"): seaweedfs.secret_key,
               ("medsynth-credentials", "MEDSYNTH_METRICS_TOKEN"): "metrics-token"}
    env = _resolve_env(pod["containers"][0], pod, tmp_path, secrets)
    env.update(MEDSYNTH_HOME=str(tmp_path / "home"), HOME=str(tmp_path))  # the pod's emptyDirs
    command = _first_key_command(notes(values))
    argv = [str(Path(sys.executable).parent / "medsynth"), *command[command.index("--") + 2:]]
    result = subprocess.run(argv, env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    key = ApiKeys(open_store(Settings(store="s3", s3_endpoint=seaweedfs.endpoint, s3_bucket="medsynth-bootstrap",
                                      s3_access_key=seaweedfs.access_key, s3_secret_key=seaweedfs.secret_key))).authenticate(token)
    assert (key.project, key.role.value, key.name) == ("default", "admin", "first admin") and key.expires_at is not None


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
    docs = render(GPU_VALUES, CRD_APIS)
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
