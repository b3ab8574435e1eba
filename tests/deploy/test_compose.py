"""deploy/compose.yaml checked without a Docker engine: every service, image, port, volume and
variable, against the settings the services really read and the files the compose file mounts."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from medsynth.core.settings import Settings
from test_images import DOCKERFILE, SERVICES, stages

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
INFRA = {"kafka", "minio", "minio-init", "topics", "torchserve", "prometheus", "grafana"}
VARIABLE = re.compile(r"(?<!\$)\$\{(\w+)(?::?[-?][^}]*)?\}")  # $${X} is compose's escape: the container's own


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def example_env() -> dict[str, str]:
    lines = [l for l in (DEPLOY / ".env.example").read_text().splitlines() if l.strip() and not l.startswith("#")]
    return dict(l.split("=", 1) for l in lines)


def substitute(value: str, env: dict[str, str]) -> str:
    def one(match: re.Match) -> str:
        name, rest = match.group(1), match.group(0)[len(match.group(1)) + 2:-1]
        if name in env:
            return env[name]
        if rest.startswith(":-") or rest.startswith("-"):
            return rest.split("-", 1)[1]
        raise AssertionError(f"${{{name}}} has no value in .env.example and no default")
    return VARIABLE.sub(one, str(value))


def test_every_service_is_there_built_from_its_target(compose: dict) -> None:
    services = compose["services"]
    assert set(SERVICES) | INFRA <= set(services), set(SERVICES) | INFRA - set(services)
    targets = stages(DOCKERFILE.read_text())
    for name in [*SERVICES, "torchserve", "topics"]:
        build = services[name]["build"]
        assert (REPO / build["dockerfile"]).resolve() == DOCKERFILE and build["target"] in targets, name
    for name in SERVICES:
        assert services[name]["build"]["target"] == name


def test_images_are_pinned(compose: dict) -> None:
    for name, service in compose["services"].items():
        if "image" in service:
            image = service["image"]
            assert ":" in image and not image.endswith(":latest"), f"{name}: {image}"


def test_the_services_environment_is_a_valid_production_configuration(compose: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    env = example_env()
    fields = {f"MEDSYNTH_{name.upper()}" for name in Settings.model_fields}
    for name in SERVICES:
        environment = compose["services"][name]["environment"]
        unknown = sorted(k for k in environment if k.startswith("MEDSYNTH_") and k not in fields)
        assert not unknown, f"{name} sets variables no setting reads: {unknown}"
        with monkeypatch.context() as m:  # read as the service reads it: from its environment
            for key in [k for k in os.environ if k.startswith("MEDSYNTH_")]:
                m.delenv(key)
            for key, value in environment.items():
                m.setenv(key, substitute(value, env))
            settings = Settings()  # the production checks (auth on, metrics token, no shipped secret) run here
        assert settings.environment.value == "production" and settings.store.value == "s3"
        assert settings.kafka_bootstrap == "kafka:9092" and settings.s3_endpoint == "minio:9000"


def test_every_variable_has_an_example_and_env_is_not_committed(compose: dict) -> None:
    text = COMPOSE.read_text()
    example = example_env()
    for name in set(VARIABLE.findall(text)):
        assert name in example, f"${{{name}}} is used in compose.yaml but not in .env.example"
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/.env"], cwd=REPO)
    assert ignored.returncode == 0, "deploy/.env must be git-ignored"


def test_ports_volumes_and_mounted_files(compose: dict) -> None:
    host_ports = []
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        host_ports += [str(p).split(":")[0] for p in service.get("ports", [])]
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in declared, f"{name} uses volume {source!r}, which is not declared"
    assert len(host_ports) == len(set(host_ports)), host_ports
    assert {"8000", "8001", "11112", "3000", "9090"} <= set(host_ports)
    prometheus = {v.split(":")[1] for v in compose["services"]["prometheus"]["volumes"]}
    rules = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["rule_files"]
    assert set(rules) <= prometheus, "Prometheus reads alert rules that are not mounted"
    grafana = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["grafana"]["volumes"]}
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "medsynth.yaml").read_text())
    mounted = DEPLOY / grafana[provider["providers"][0]["options"]["path"]]
    assert sorted(mounted.glob("*.json")), "Grafana's dashboard folder is mounted from a folder with no dashboard"


def test_prometheus_scrapes_every_service_with_the_metrics_token(compose: dict) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {t for c in jobs["medsynth"]["static_configs"] for t in c["targets"]}
    port = compose["x-medsynth"]["environment"]["MEDSYNTH_HTTP_PORT"]
    assert targets == {f"{name}:{port}" for name in SERVICES}
    assert jobs["medsynth"]["authorization"]["credentials_file"] == "/run/secrets/metrics_token"
    assert "metrics_token" in compose["services"]["prometheus"]["secrets"]
    assert compose["secrets"]["metrics_token"]["environment"] == "MEDSYNTH_METRICS_TOKEN"
    assert {t for c in jobs["torchserve"]["static_configs"] for t in c["targets"]} == {"torchserve:8082"}


def test_torchserve_keeps_token_authorization_and_shares_its_keys_with_the_sampler(compose: dict) -> None:
    props = dict(l.split("=", 1) for l in (DEPLOY / "torchserve" / "config.properties").read_text().splitlines()
                 if l and not l.startswith("#"))
    assert props["disable_token_authorization"] == "false" and props["model_store"] == "/models"
    sampler, torchserve = compose["services"]["sampler"], compose["services"]["torchserve"]
    key_file = sampler["environment"]["MEDSYNTH_TORCHSERVE_KEY_FILE"]
    assert key_file.startswith(torchserve["working_dir"] + "/")
    assert any(v.startswith("torchserve-keys:") for v in sampler["volumes"]) and any(v.startswith("torchserve-keys:") for v in torchserve["volumes"])
    assert "model-store:/models" in sampler["volumes"]


def test_every_torch_process_has_a_bounded_thread_count(compose: dict) -> None:
    """Four torch processes share the machine: each sets OMP_NUM_THREADS (one site setting) rather than
    PyTorch's thread per core, which makes concurrent jobs spin against each other."""
    for name in ("trainer", "segmenter", "evaluator", "sampler", "torchserve"):
        assert compose["services"][name]["environment"]["OMP_NUM_THREADS"] == "${MEDSYNTH_TORCH_THREADS:-2}", name


def test_each_job_kind_is_consumed_by_one_worker(compose: dict) -> None:
    """The trainer (GPU_VARIANT=cuda: on the GPU) trains generators only; prepare-dataset is the CPU preparer's.
    Each worker runs what its MEDSYNTH_WORKER_KINDS says (handlers_for), and each job kind has one worker."""
    from medsynth.bus.messages import JobKind
    from medsynth.handlers import handlers_for

    consumed: dict[str, str] = {}
    for name in ("trainer", "preparer", "sampler", "segmenter", "evaluator"):
        kinds = compose["services"][name]["environment"].get("MEDSYNTH_WORKER_KINDS")
        runs = handlers_for(name, kinds.split(",") if kinds else None)
        for kind in runs:
            assert kind.value not in consumed, (kind, consumed.get(kind.value), name)
            consumed[kind.value] = name
    assert set(consumed) == {k.value for k in JobKind} and consumed["prepare-dataset"] == "preparer"


def test_kafka_tls_sasl_and_the_stores_ca_pass_through_from_the_env_file(compose: dict, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/.env pointing the services at brokers of one's own over SASL_SSL and a store over https with an
    internal CA: every service's environment loads with those settings (the empty defaults of .env.example load
    as unset, as the test above shows)."""
    from tls_certs import make_pki

    from medsynth.bus.client import kafka_security_options

    pki = make_pki(tmp_path)
    env = dict(example_env(), MEDSYNTH_KAFKA_BOOTSTRAP="b-1.kafka.example.org:9093", MEDSYNTH_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
               MEDSYNTH_KAFKA_SASL_MECHANISM="SCRAM-SHA-256", MEDSYNTH_KAFKA_SASL_USERNAME="medsynth",
               MEDSYNTH_KAFKA_SASL_PASSWORD="kafka-secret", MEDSYNTH_KAFKA_SSL_CAFILE=str(pki.ca),
               MEDSYNTH_S3_ENDPOINT="s3.example.org:443", MEDSYNTH_S3_SECURE="true", MEDSYNTH_S3_CA_BUNDLE=str(pki.ca))
    for name in SERVICES:
        with monkeypatch.context() as m:
            for key in [k for k in os.environ if k.startswith("MEDSYNTH_")]:
                m.delenv(key)
            for key, value in compose["services"][name]["environment"].items():
                m.setenv(key, substitute(value, env))
            settings = Settings()
        options = kafka_security_options(settings)
        assert settings.kafka_bootstrap == "b-1.kafka.example.org:9093" and settings.s3_secure and settings.s3_ca_bundle == pki.ca
        assert options == {"security_protocol": "SASL_SSL", "ssl_check_hostname": True, "ssl_cafile": str(pki.ca),
                           "sasl_mechanism": "SCRAM-SHA-256", "sasl_plain_username": "medsynth", "sasl_plain_password": "kafka-secret"}, name


def test_the_gpu_override_gives_the_gpu_stages_their_gpu_and_no_cpu_fallback(compose: dict) -> None:
    """deploy/compose.gpu.yaml (over compose.yaml, with GPU_VARIANT=cuda): the stages built as CUDA images ask
    for the GPU and set MEDSYNTH_DEVICE=cuda (a stage that cannot use it stops at start), and the override's
    settings are ones the services read."""
    override = yaml.safe_load((DEPLOY / "compose.gpu.yaml").read_text())
    fields = {f"MEDSYNTH_{name.upper()}" for name in Settings.model_fields}
    cuda_built = {name for name, service in compose["services"].items()
                  if (service.get("build") or {}).get("args", {}).get("VARIANT") == "${GPU_VARIANT:-cpu}"}
    assert cuda_built == {"trainer", "segmenter", "torchserve"}
    assert set(override["services"]) <= set(compose["services"])
    for name, service in override["services"].items():
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        assert bool(devices) is (name in cuda_built), name
        if devices:
            assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
            assert service["environment"]["MEDSYNTH_DEVICE"] == "cuda", name
        assert all(k in fields for k in service.get("environment", {})), name
    assert cuda_built <= set(override["services"])
    Settings(sampler_passes_per_request=int(override["services"]["sampler"]["environment"]["MEDSYNTH_SAMPLER_PASSES_PER_REQUEST"]))
