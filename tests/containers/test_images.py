"""The images themselves, one container each, outside the pipeline: what a service needs of its image that
the pipeline test would otherwise find only as a failed job."""

from __future__ import annotations

from testcontainers.core.container import DockerContainer

from compose_runner import podman_ulimits

FIND_HANDLER = ("from medsynth.core.settings import Settings; p = Settings().sampler_handler; "
                "print(p); raise SystemExit(0 if p is not None and p.is_file() else 1)")


def run_once(image: str, argv: list[str], timeout: float = 180) -> tuple[int, str]:
    container = DockerContainer(image, command=argv).with_kwargs(network_mode="host", ulimits=podman_ulimits())
    container.start()
    try:
        code = container.get_wrapped_container().wait(timeout=timeout)["StatusCode"]
        out, err = container.get_logs()
        return code, (out + err).decode(errors="replace")
    finally:
        container.stop()


def test_the_trainer_image_finds_the_sampler_handler(podman_api: str) -> None:
    """The trainer packs every generator's TorchServe archive with services/sampler/handler.py: an
    installed medsynth is told where (MEDSYNTH_SAMPLER_HANDLER; the images keep services/ at /app/services).
    Before it, every train-generator job in the trainer image failed at the archive."""
    code, output = run_once("localhost/medsynth/trainer:0.1.0", ["python", "-c", FIND_HANDLER])
    assert code == 0, output
