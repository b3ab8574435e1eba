"""The sampler's GPU path checked on the CPU: the TorchServe handler's device rule (a GPU worker without a
GPU is an error, not a CPU worker), the in-process backend's determinism settings, and the LRU that keeps
at most ``sampler_max_models`` generators loaded in TorchServe (each a worker holding a CUDA context)."""

from __future__ import annotations

from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import torch

from medsynth.core.errors import InvalidInput
from medsynth.core.settings import SamplerBackend, Settings
from medsynth.handlers import sample
from medsynth.sampling.torchserve import LoadedModels


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.mark.usefixtures("no_cuda")
def test_the_handler_runs_where_torchserve_and_medsynth_device_say(handler_module: ModuleType) -> None:
    pick = handler_module.worker_device
    assert pick(None, "auto") == pick(None, "cpu") == pick(0, "cpu") == torch.device("cpu")
    with pytest.raises(InvalidInput, match="assigned this worker no GPU"):
        pick(None, "cuda")  # the chart's GPU pool: TorchServe found no GPU
    with pytest.raises(InvalidInput, match="sees no CUDA device"):
        pick(0, "auto")  # TorchServe assigned a GPU torch cannot use: not a silent CPU worker
    with pytest.raises(InvalidInput, match="device must be"):
        pick(0, "gpu")


def test_the_handler_uses_the_gpu_torchserve_assigned(handler_module: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (8, 0))
    assert handler_module.worker_device(1, "cuda") == handler_module.worker_device(1, "auto") == torch.device("cuda:1")


def test_the_in_process_backend_applies_the_handlers_determinism_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    class Stop(Exception):
        pass

    def load_checkpoint(*args: Any, **kwargs: Any) -> None:
        raise Stop

    monkeypatch.setattr(sample, "configure_determinism", lambda: calls.append("determinism"))
    monkeypatch.setattr(sample, "load_checkpoint", load_checkpoint)
    ctx = SimpleNamespace(settings=Settings(sampler_backend=SamplerBackend.inprocess, inception_weights=None),
                          store=SimpleNamespace(get_bytes=lambda key: b""))
    entry = SimpleNamespace(checkpoint_key="generators/g/checkpoint.pt", family="stylegan2")
    with pytest.raises(Stop):
        sample._sampler(ctx, entry, None)
    assert calls == ["determinism"]  # before the weights are loaded (and reach a GPU)


class FakeTorchServe:
    """The management calls LoadedModels makes, on a dict of registered models."""

    management_url = "http://torchserve:8081"

    def __init__(self, *registered: str) -> None:
        self.registered = list(registered)
        self.calls: list[tuple[str, str]] = []

    def models(self) -> list[str]:
        return list(self.registered)

    def unregister(self, name: str) -> bool:
        self.calls.append(("unregister", name))
        if name not in self.registered:
            return False
        self.registered.remove(name)
        return True

    def register(self, name: str) -> None:
        self.calls.append(("register", name))
        self.registered.append(name)


def test_loaded_generators_are_kept_to_capacity_by_least_recent_use() -> None:
    server = FakeTorchServe("left-by-a-previous-sampler")
    loaded = LoadedModels(capacity=2)
    assert loaded.use(server, "a", lambda: server.register("a")) == []
    assert loaded.use(server, "b", lambda: server.register("b")) == ["left-by-a-previous-sampler"]  # unknown: oldest
    assert loaded.use(server, "a", lambda: server.register("a")) == []  # loaded already: no registration
    assert loaded.use(server, "c", lambda: server.register("c")) == ["b"]  # b is the least recently used
    assert sorted(server.registered) == ["a", "c"]
    assert [c for c in server.calls if c[0] == "register"] == [("register", "a"), ("register", "b"), ("register", "c")]
    loaded.capacity = 1
    assert loaded.use(server, "c", lambda: server.register("c")) == ["a"] and server.registered == ["c"]
    with pytest.raises(InvalidInput, match="capacity"):
        LoadedModels(0)


def test_the_cohort_handler_loads_through_the_lru(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cohort job registers its generator through LoadedModels, which unloads the least recently used."""
    server = FakeTorchServe("old-1", "old-2")

    class Client(FakeTorchServe):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.__dict__ = server.__dict__
            self.inference_url = "http://torchserve:8080"

        def register(self, mar: str, name: str, **kwargs: Any) -> bool:  # type: ignore[override]
            server.register(name)
            return True

    monkeypatch.setattr(sample, "TorchServeClient", Client)
    monkeypatch.setattr(sample, "_wait_for", lambda client, ctx: None)
    monkeypatch.setattr(sample, "_publish_archive", lambda store, settings, key: "g.mar")
    monkeypatch.setattr(sample, "_LOADED", {})
    ctx = SimpleNamespace(settings=Settings(sampler_max_models=2, inception_weights=None), store=None)
    entry = SimpleNamespace(spec={"family": "stylegan2"}, model_name="new", archive_key="generators/new/new.mar")
    sample._sampler(ctx, entry, None)
    assert server.registered == ["old-2", "new"] and server.calls == [("unregister", "old-1"), ("register", "new")]  # room first
