"""The GPU path works the first time: a few training steps of every family (one in bf16) on CUDA without a
host synchronisation inside a StyleGAN2 step, the segmenter and the evaluator's extractor on the device,
the TorchServe handler with ``gpu_id=0``, and every family's CPU-traced export loaded onto the GPU.

GPU results are compared with the CPU's within tolerance only: TF32 and cuDNN convolutions differ from the
CPU in the last bits (bit-exact regeneration holds on one GPU model and software build, not across devices).
Run with ``pytest -m cuda`` (or the whole suite); every test is marked ``cuda`` and skips, saying why, where
torch sees no usable GPU (an NVIDIA driver new enough for the wheels' CUDA runtime — CUDA 13: 580 or newer —
and a GPU of compute capability 7.5 or newer; see medsynth.core.devices)."""

from __future__ import annotations

import contextlib
import io
import json
import sys
import warnings
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medsynth.core.devices import cuda_problem, pick_device
from medsynth.generators.base import SampleMode, StepContext, TrainingOptions, prepare_data
from medsynth.generators.checkpoint import load_sampling_nets
from medsynth.generators.registry import FAMILIES
from medsynth.metrics.fidelity import EncoderExtractor
from medsynth.sampling.archive import build_model_archive, trace_sampling_net
from medsynth.sampling.backends import InProcessSampler
from medsynth.sampling.generate import configure_determinism, generate, sample_noise
from medsynth.segmentation import SegmentationSpec, train_segmenter
from medsynth.segmentation.evaluate import evaluate_segmenter
from medsynth.segmentation.models import encoder
from medsynth.store.local import LocalStore
from medsynth.training.loop import train_generator

# The training and sampling tests' helpers, imported by name. (No conftest.py in this folder: a second module
# named `conftest` on the path breaks the segmentation tests' `from conftest import ...`.)
TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS / "training"), str(TESTS / "sampling")]
from sampling_helpers import HANDLER_PATH, small_generator  # noqa: E402
from training_data import squares, tiny_spec  # noqa: E402


def _why_not() -> str | None:
    if not torch.cuda.is_available():
        return (f"no usable CUDA device: torch {torch.__version__} (CUDA {torch.version.cuda}) sees none; the GPU smoke "
                "suite (pytest -m cuda) needs an NVIDIA GPU of compute capability >= 7.5 and a driver >= 580")
    return cuda_problem(0)


WHY_NOT = _why_not()
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")]
CUDA = torch.device("cuda:0")


@pytest.fixture(autouse=True)
def _restore_determinism():
    """The sampler handler switches torch to deterministic algorithms process-wide: put it back."""
    state = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    yield
    torch.use_deterministic_algorithms(state[0], warn_only=state[1])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return squares(16)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_few_steps_of_every_family_train_and_sample_on_the_gpu(family: str, data, tmp_path: Path) -> None:
    assert pick_device("cuda") == torch.device("cuda")
    spec = tiny_spec(family, training={"steps": 3, "checkpoint_every": 3})
    result = train_generator(spec, *data, store=LocalStore(tmp_path), prefix="run/", device=CUDA)
    assert result.step == 3 and all(v is None or np.isfinite(v) for values in result.curves.values() for v in values)
    configure_determinism()
    sampler = InProcessSampler(spec, load_sampling_nets(result.checkpoint, device=CUDA), SampleMode(), device=CUDA)
    images, masks = sampler.draw(1, range(4))
    again, _ = sampler.draw(1, range(4))
    assert images.shape == (4, 1, 32, 32) and np.isfinite(images).all() and np.array_equal(images, again)
    assert sampler.describe()["software"]["device"] == "cuda:0" and "device_name" in sampler.describe()["software"]


@pytest.mark.parametrize("family", ["stylegan2", "diffusion"])
def test_one_bf16_step(family: str, data, tmp_path: Path) -> None:
    spec = tiny_spec(family, training={"steps": 1, "checkpoint_every": 1, "precision": "bf16"})
    result = train_generator(spec, *data, store=LocalStore(tmp_path), prefix="bf16/", device=CUDA)
    assert all(np.isfinite(v) for values in result.curves.values() for v in values if v is not None)


def test_a_stylegan2_step_makes_no_host_synchronisation(data) -> None:
    """Its random draws reach the GPU as asynchronous pinned copies, its FIR taps are buffers, ADA's state
    stays on the device: torch's sync debug mode sees no synchronising call in an R1 + ADA step."""
    spec = tiny_spec("stylegan2", augment="ada", r1_every=1)
    train = prepare_data(data[0], data[1], spec.data, CUDA)
    training = TrainingOptions(batch_size=4, lr_g=0.0025, lr_d=0.0025, betas=(0.0, 0.99))
    torch.manual_seed(0)
    state = spec.family.init_state(spec.options, training, train)
    for step in range(2):  # the first step warms up (allocations, cuDNN); the second is checked
        ctx = StepContext(options=spec.options, training=training, data=train, step=step,
                          rng=torch.Generator().manual_seed(step), autocast=contextlib.nullcontext)
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                losses = spec.family.train_step(state, ctx)
            finally:
                torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    assert not syncs, syncs[:5]
    assert all(torch.isfinite(v) for v in losses.values())


def _phantom_splits() -> dict[str, dict[str, np.ndarray]]:
    """The segmentation tests' phantom splits (tests/segmentation/conftest.py's helper), smaller."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("seg_phantoms_for_cuda", Path(__file__).resolve().parents[1] / "segmentation" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {"train": module.phantom_split(range(0, 6)), "val": module.phantom_split(range(100, 102)),
            "test": module.phantom_split(range(200, 202))}


def test_segmenter_and_in_domain_extractor_on_the_gpu() -> None:
    splits = _phantom_splits()
    spec = SegmentationSpec(steps=20, batch_size=8, lr=1e-2, val_every=10, num_classes=3, channels=(8, 16, 32), seed=0)
    result = train_segmenter(spec, splits["train"], splits["val"], device=CUDA)
    assert {p.device for p in result.model.parameters()} == {CUDA} and np.isfinite(result.best_val_dice)
    metrics = evaluate_segmenter(result.model, splits["test"], 3, n_boot=10)
    assert metrics["n_slices"] == len(splits["test"]["images"])
    images = torch.from_numpy(splits["test"]["images"][:6])
    on_gpu = EncoderExtractor(encoder(result.model), "enc", device=CUDA)
    assert {p.device for p in on_gpu.encoder.parameters()} == {CUDA}
    gpu_features = on_gpu(images)
    cpu_features = EncoderExtractor(encoder(result.model), "enc", device="cpu")(images)
    np.testing.assert_allclose(gpu_features, cpu_features, rtol=1e-2, atol=1e-2)  # TF32 convolutions


def test_the_torchserve_handler_samples_on_gpu_0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setenv("MEDSYNTH_DEVICE", "cuda")
    module_spec = importlib.util.spec_from_file_location("medsynth_sampler_handler_cuda", HANDLER_PATH)
    handler_module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(handler_module)
    generator = small_generator(family="stylegan2")
    mar = build_model_archive(generator.spec, generator.weights, model_name="g", version="1", out_dir=tmp_path)
    with zipfile.ZipFile(mar) as zf:
        zf.extractall(tmp_path / "model")
    handler = handler_module.SamplerHandler()
    handler.initialize(SimpleNamespace(system_properties={"model_dir": str(tmp_path / "model"), "gpu_id": 0}))
    assert handler.device == torch.device("cuda:0")
    context = SimpleNamespace(set_response_content_type=lambda i, v: None, set_response_status=lambda *a, **k: None)
    (answer,) = handler.handle([{"data": {"seed": 3, "start": 0, "count": 4}}], context)
    with np.load(io.BytesIO(answer)) as npz:
        images = npz["images"]
    cpu_images, _ = generate(generator.net, 3, range(4))
    np.testing.assert_allclose(images, cpu_images, atol=2e-2)  # same samples; TF32 moves the last bits
    described = json.loads(handler.handle([{"data": {"describe": True}}], context)[0])
    assert described["software"]["device"] == "cuda:0"
    with pytest.raises(Exception, match="no GPU"):
        handler_module.SamplerHandler().initialize(SimpleNamespace(system_properties={"model_dir": str(tmp_path / "model"), "gpu_id": None}))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:.*torch.jit.*deprecated:FutureWarning")
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_cpu_traced_export_runs_on_the_gpu(family: str, tmp_path: Path) -> None:
    generator = small_generator(family=family)
    path = tmp_path / "sampler.torchscript.pt"
    trace_sampling_net(generator.net).save(str(path))
    loaded = torch.jit.load(str(path), map_location=CUDA)
    noise = sample_noise(9, range(2), generator.net.noise_shapes)  # the trace's batch (StyleGAN2's grouped conv)
    condition = torch.zeros(2, dtype=torch.int64)
    with torch.no_grad():
        on_gpu = loaded([n.to(CUDA) for n in noise], condition.to(CUDA))
        on_cpu = generator.net(noise, condition)
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=5e-2, rtol=5e-2)
