"""Fixtures for the sampling tests: a small random generator, a local store, and one real TorchServe
server per test session (it takes a few seconds to start, its first worker a few more)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from medsynth.sampling.archive import build_model_archive
from medsynth.sampling.backends import InProcessSampler
from medsynth.local.torchserve import TorchServeProcess
from medsynth.store.local import LocalStore
from sampling_helpers import HANDLER_PATH, MODEL_NAME, MODEL_VERSION, SmallGenerator, served_generators, small_generator


@pytest.fixture(scope="session")
def generator() -> SmallGenerator:
    return small_generator()


@pytest.fixture
def in_process(generator: SmallGenerator) -> InProcessSampler:
    return InProcessSampler(generator.spec, generator.nets)


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture(scope="session")
def handler_module() -> ModuleType:
    """services/sampler/handler.py imported as a module (it is not a package)."""
    spec = importlib.util.spec_from_file_location("medsynth_sampler_handler_under_test", HANDLER_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory, generator: SmallGenerator) -> Path:
    """The archive of ``generator`` as MODEL_NAME, and one small generator of every family (and variant)
    as ``fam-<family>`` (``fam-<variant>``)."""
    store = tmp_path_factory.mktemp("model-store")
    build_model_archive(generator.spec, generator.weights, model_name=MODEL_NAME, version=MODEL_VERSION, out_dir=store)
    for name, (family, options) in served_generators().items():
        small = small_generator(family=family, **options)
        build_model_archive(small.spec, small.weights, model_name=f"fam-{name}", version=MODEL_VERSION, out_dir=store)
    return store


@pytest.fixture(scope="session")
def torchserve(tmp_path_factory: pytest.TempPathFactory, model_store: Path) -> Iterator[TorchServeProcess]:
    assert shutil.which("java"), "TorchServe needs Java 17 on PATH (openjdk-17-jre-headless); `make install` checks it"
    import psutil

    server = TorchServeProcess(model_store, tmp_path_factory.mktemp("torchserve"))
    with server:
        yield server
        # The CLI wrapper, the Java frontend and the Python workers: stop() must end them all.
        processes = [psutil.Process(pid) for pid in server.pids()]
    _, alive = psutil.wait_procs(processes, timeout=5)
    assert not alive, f"TorchServe processes survived stop(): {alive}"
