"""MEDSYNTH_DEVICE without a silent CPU fallback: an explicit cuda that torch cannot honour (no GPU, a driver
too old for the wheels' CUDA runtime, a GPU below the compute capabilities the wheels were built for) is an
error naming why — when a job picks its device and when a worker service starts, before it takes any job.
The GPU itself is exercised by tests/cuda (``pytest -m cuda``)."""

from __future__ import annotations

import pytest
import torch

from medsynth.core.devices import cuda_problem, pick_device, require_device
from medsynth.core.errors import InvalidInput
from medsynth.core.settings import Settings
from medsynth.generators.base import host_to_device
from medsynth.handlers import service


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def old_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """One GPU of compute capability 6.1 (a Pascal card), torch built for 7.5 and newer."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (6, 1))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Tesla P100")
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"])


@pytest.mark.usefixtures("no_cuda")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_an_explicit_cuda_without_one_is_an_error_naming_the_driver_and_the_way_out(name: str) -> None:
    with pytest.raises(InvalidInput, match=rf"device '{name}' was asked for .*driver 580 or newer.*MEDSYNTH_DEVICE=cpu"):
        pick_device(name)
    with pytest.raises(InvalidInput, match="sees no CUDA device"):
        require_device(name)


@pytest.mark.usefixtures("no_cuda")
def test_auto_and_cpu_run_on_the_cpu_without_cuda() -> None:
    assert pick_device("auto") == pick_device("cpu") == torch.device("cpu")
    require_device("auto")
    require_device("cpu")


@pytest.mark.usefixtures("old_gpu")
def test_a_gpu_the_wheels_have_no_kernels_for_is_named_and_auto_keeps_off_it() -> None:
    assert cuda_problem(0) == "Tesla P100 has compute capability 6.1, and torch " + torch.__version__ + \
        f" (CUDA {torch.version.cuda}) has kernels for 7.5 and newer only."
    with pytest.raises(InvalidInput, match=r"'cuda' was asked for .*compute capability 6\.1.*7\.5 and newer"):
        pick_device("cuda")
    assert "cuda:3 does not exist" in cuda_problem(3)
    assert pick_device("auto") == torch.device("cpu")


def test_a_supported_gpu_has_no_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_75", "sm_90a", "sm_100"])
    assert cuda_problem(1) is None
    assert pick_device("cuda:1") == torch.device("cuda:1") and pick_device("auto") == torch.device("cuda")


@pytest.mark.usefixtures("no_cuda")
def test_a_worker_set_to_cuda_stops_at_start_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before it connects to anything: the pod crash-loops with the reason instead of training on the CPU."""

    def no_worker(*args: object, **kwargs: object) -> None:
        raise AssertionError("the worker was built although MEDSYNTH_DEVICE=cuda cannot be honoured")

    monkeypatch.setattr(service, "Worker", no_worker)
    with pytest.raises(InvalidInput, match="MEDSYNTH_DEVICE"):
        service.run_worker("trainer", Settings(device="cuda", inception_weights=None))


def test_host_to_device_leaves_cpu_draws_as_they_are() -> None:
    """The CPU path (what every stored CPU record was made with) is untouched: the same tensor."""
    draw = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    assert host_to_device(draw, torch.device("cpu")) is draw
