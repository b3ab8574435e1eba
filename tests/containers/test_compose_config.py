"""`docker compose config`, with podman-compose: deploy/compose.yaml alone and with deploy/compose.podman.yaml,
and what the override may change — addresses and images, nothing of the wiring. No container runs here."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from compose_runner import loopback_ports

from medsynth.core.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"

MEDSYNTH = ["api", "ingest", "trainer", "preparer", "sampler", "segmenter", "evaluator"]
ONE_SHOT = ["topics", "minio-init"]
#: The settings that say where a service listens and where it finds the others: all the override may change.
RELOCATED = {"MEDSYNTH_HTTP_HOST", "MEDSYNTH_HTTP_PORT", "MEDSYNTH_KAFKA_BOOTSTRAP", "MEDSYNTH_S3_ENDPOINT",
             "MEDSYNTH_TORCHSERVE_INFERENCE_URL", "MEDSYNTH_TORCHSERVE_MANAGEMENT_URL", "MEDSYNTH_DICOM_HOST", "MEDSYNTH_DICOM_PORT"}
PORTS = range(26000, 27000)   # the container test's; 24700-24799 belong to a benchmark's local stack
WIRING = ("volumes", "depends_on", "restart", "shm_size", "working_dir")


def test_config_of_compose_yaml_and_of_the_override(base_config: dict, config: dict) -> None:
    """Both load (merged, interpolated); the override keeps every service but the monitoring pair, whose
    images come from a registry (profile `monitoring`)."""
    assert set(base_config["services"]) == {*MEDSYNTH, *ONE_SHOT, "kafka", "minio", "torchserve", "prometheus", "grafana"}
    assert set(config["services"]) == set(base_config["services"]) - {"prometheus", "grafana"}


@pytest.mark.parametrize("name", MEDSYNTH + ["topics", "torchserve"])
def test_the_override_relocates_and_changes_nothing_else(base_config: dict, config: dict, name: str) -> None:
    base, ours = base_config["services"][name], config["services"][name]
    base_env, env = base.get("environment") or {}, ours.get("environment") or {}
    assert set(env) == set(base_env), f"{name}: variables added or dropped: {set(env) ^ set(base_env)}"
    changed = {key for key in env if str(env[key]) != str(base_env[key])}
    assert changed <= RELOCATED, f"{name}: the override changes {sorted(changed - RELOCATED)}"
    for key in changed - {"MEDSYNTH_HTTP_PORT", "MEDSYNTH_DICOM_PORT"}:
        assert re.match(r"(http://)?127\.0\.0\.1(:\d+)?$", str(env[key])), (name, key, env[key])
    for key in WIRING:
        assert ours.get(key) == base.get(key), f"{name}: {key} differs: {ours.get(key)} != {base.get(key)}"
    assert ours["network_mode"] == "host" and not ours.get("ports"), name
    assert ours["image"] == f"localhost/medsynth/{base['build']['target']}:0.1.0", name


@pytest.mark.parametrize("name", MEDSYNTH + ["topics"])
def test_each_service_loads_as_a_production_configuration_pointing_at_the_trial_servers(
        config: dict, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    services = config["services"]
    for key in [k for k in os.environ if k.startswith("MEDSYNTH_")]:
        monkeypatch.delenv(key)
    for key, value in services[name]["environment"].items():
        monkeypatch.setenv(key, str(value))
    settings = Settings()  # the production checks (auth on, metrics token, no shipped secret) run here
    assert settings.environment.value == "production" and settings.store.value == "s3"
    assert f"--listener-url=tcp://{settings.kafka_bootstrap}" in services["kafka"]["command"]
    host, _, port = settings.s3_endpoint.rpartition(":")
    assert host == "127.0.0.1" and f"-s3.port={port}" in services["minio"]["command"][-1]
    torchserve = services["torchserve"]["command"][-1]
    for url in (settings.torchserve_inference_url, settings.torchserve_management_url):
        assert f"#={url}#" in torchserve, url


def test_every_listener_has_its_own_loopback_port(config: dict) -> None:
    seen: dict[int, str] = {}
    for name, spec in config["services"].items():
        if name in ONE_SHOT:
            continue
        assert spec["network_mode"] == "host" and not spec.get("ports"), name
        for port in loopback_ports(spec):
            assert port in PORTS, f"{name} listens on {port}, outside {PORTS}"
            assert port not in seen, f"{name} and {seen[port]} both listen on {port}"
            seen[port] = name
    assert len(seen) >= 7 + 1 + 10 + 5, seen  # the seven services, tansu, SeaweedFS's ten, TorchServe's five


def test_the_trial_servers_run_the_local_stacks_command_lines(config: dict) -> None:
    """The override's `weed mini` and `tansu broker` are what `medsynth stack` runs (medsynth.local.servers),
    on the override's ports and folders."""
    from medsynth.local.servers import seaweed_command, tansu_command

    services = config["services"]
    weed = seaweed_command(Path("/var/lib/trial/seaweedfs"), 26030, Path("/var/lib/trial/s3-identities.json"))
    exec_line = next(l for l in services["minio"]["command"][-1].splitlines() if l.startswith("exec weed "))
    assert exec_line.split()[1:] == ["weed", *weed[1:]]
    assert services["kafka"]["command"] == ["tansu", *tansu_command(26020)[1:]]
    tansu_env = services["kafka"]["environment"]
    assert tansu_env["AWS_ENDPOINT"] == "http://127.0.0.1:26030" and tansu_env["AWS_ACCESS_KEY_ID"] == services["minio"]["environment"]["MINIO_ROOT_USER"]


def test_torchserve_runs_the_images_command_with_the_shipped_config(config: dict) -> None:
    """The override's TorchServe command is the image's CMD, its config compose.yaml's config.properties with
    the listeners moved (and the two gRPC ports TorchServe always opens given ports of their own)."""
    dockerfile = (REPO / "deploy" / "images" / "Dockerfile").read_text()
    stage = dockerfile.split("AS torchserve", 1)[1].split("\nFROM ", 1)[0]
    image_cmd = json.loads(re.search(r"^CMD (\[.*\])$", stage, re.M).group(1))
    script = config["services"]["torchserve"]["command"][-1]
    exec_line = next(l for l in script.splitlines() if l.startswith("exec torchserve "))
    ours = exec_line.split()[1:]
    assert ours[:-1] == image_cmd[:-1] and image_cmd[-2] == "--ts-config" and ours[-1] == "/tmp/config.properties"
    assert image_cmd[-1] in script and "/etc/torchserve/config.properties:ro" in "\n".join(config["services"]["torchserve"]["volumes"])
    shipped = (DEPLOY / "torchserve" / "config.properties").read_text()
    for address in re.findall(r"=(http://0\.0\.0\.0:\d+)", shipped):
        assert f"#={address}#" in script, f"{address} of config.properties is not moved"
