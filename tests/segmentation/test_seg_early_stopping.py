"""Early stopping: the plateau rule on synthetic validation curves, the training loop stopping on one
and testing the best-validation weights, and the settings it refuses."""

from __future__ import annotations

import pytest
import torch

from conftest import small_spec
from medsynth.core.errors import InvalidInput
from medsynth.segmentation import SegmentationSpec, load_segmenter, save_segmenter, train_segmenter
from medsynth.segmentation import train as train_module
from medsynth.segmentation.config import default_val_every
from medsynth.segmentation.train import EarlyStopping


def _run(rule: EarlyStopping, curve: list[float], every: int = 10) -> int | None:
    """The step at which ``rule`` stops on ``curve`` (checked every ``every`` steps), or None."""
    for k, dice in enumerate(curve, start=1):
        if rule.update(k * every, dice):
            return k * every
    return None


def test_the_plateau_rule_on_synthetic_curves() -> None:
    rising_then_flat = [0.2, 0.5, 0.7, 0.69, 0.70, 0.65, 0.9]
    assert _run(EarlyStopping(patience=3), rising_then_flat) == 60  # 3 checks after the best (0.7 at 30) without beating it
    assert _run(EarlyStopping(patience=4), rising_then_flat) is None  # 0.9 at 70 comes in time
    assert _run(EarlyStopping(patience=1), [0.1, 0.2, 0.3, 0.3]) == 40  # a tie is no improvement
    assert _run(EarlyStopping(patience=2, min_delta=0.05), [0.5, 0.52, 0.54, 0.56]) == 30  # +0.02 a check is below min_delta
    assert _run(EarlyStopping(patience=2, min_steps=60), [0.5, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4]) == 60  # not before step 60
    assert _run(EarlyStopping(patience=1), [0.0, 0.0]) == 20  # a run stuck at 0 stops too (min_steps guards against that)
    with pytest.raises(InvalidInput, match="patience"):
        EarlyStopping(patience=0)


class Script:
    """The validation scores the training loop will see, one per check, in order."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def play(self, values: list[float]) -> None:
        self.values = list(values)

    def __call__(self, pred, target, num_classes) -> float:
        return self.values.pop(0)


@pytest.fixture
def scripted_val_dice(monkeypatch: pytest.MonkeyPatch) -> Script:
    """Replaces the validation score of the training loop (pooled Dice on real val) by a script."""
    script = Script()
    monkeypatch.setattr(train_module, "pooled_dice", script)
    return script


def test_training_stops_at_a_plateau_and_tests_the_best_weights(splits, scripted_val_dice) -> None:
    scripted_val_dice.play([0.2, 0.6, 0.5, 0.55, 0.58, 0.9, 0.9])  # best at step 4, no gain at 6, 8, 10: stop at 10
    spec = small_spec(steps=40, val_every=2, early_stopping=True, patience=3)
    result = train_segmenter(spec, splits["train"], splits["val"])
    assert (result.stopped_step, result.stop_reason, result.best_step, result.best_val_dice) == (10, "plateau", 4, 0.6)
    assert result.curves["val_step"] == [2, 4, 6, 8, 10] and result.curves["val_dice"] == [0.2, 0.6, 0.5, 0.55, 0.58]
    assert len(result.curves["train_loss"]) == 10  # it stopped: no step past 10 was trained

    # The weights kept are the step-4 weights: a fixed 4-step run of the same seed ends on exactly them.
    scripted_val_dice.play([0.1, 0.2])
    at_four = train_segmenter(small_spec(steps=4, val_every=2), splits["train"], splits["val"])
    assert at_four.best_step == 4 and at_four.stop_reason == "cap" and at_four.stopped_step == 4
    assert all(torch.equal(result.state_dict[k], at_four.state_dict[k]) for k in result.state_dict)
    assert all(torch.equal(v, result.state_dict[k]) for k, v in result.model.state_dict().items())  # loaded into the model
    loaded = load_segmenter(save_segmenter(result))
    assert (loaded.stopped_step, loaded.stop_reason, loaded.spec) == (10, "plateau", spec)


def test_a_run_that_keeps_improving_trains_to_the_cap(splits, scripted_val_dice) -> None:
    scripted_val_dice.play([0.1 * k for k in range(1, 7)])
    result = train_segmenter(small_spec(steps=12, val_every=2, early_stopping=True, patience=1), splits["train"], splits["val"])
    assert (result.stopped_step, result.stop_reason, result.best_step) == (12, "cap", 12)
    assert result.summary()["stop_reason"] == "cap"


def test_min_steps_holds_a_flat_start(splits, scripted_val_dice) -> None:
    scripted_val_dice.play([0.0] * 10)
    result = train_segmenter(small_spec(steps=20, val_every=2, early_stopping=True, patience=2, min_steps=12), splits["train"], splits["val"])
    assert (result.stopped_step, result.stop_reason) == (12, "plateau")
    assert result.best_step == 2  # earliest on ties


@pytest.mark.parametrize(
    ("field", "value", "others"),
    [("patience", 0, {}), ("patience", 1.5, {}), ("min_steps", 101, {"steps": 100}), ("min_steps", -1, {}),
     ("min_delta", 1.0, {}), ("min_delta", -0.1, {}), ("early_stopping", "yes", {})],
)
def test_bad_early_stopping_settings_name_the_field(field: str, value, others: dict) -> None:
    with pytest.raises(InvalidInput, match=field):
        SegmentationSpec(**{**others, field: value})


def test_default_validation_interval() -> None:
    assert default_val_every(600, early_stopping=False) == 60  # ten checks a run, as before early stopping
    assert default_val_every(5000, early_stopping=False) == 500
    assert default_val_every(5000, early_stopping=True) == 100  # a generous cap keeps the patience window short
    assert default_val_every(300, early_stopping=True) == 30 and default_val_every(5, early_stopping=True) == 1
