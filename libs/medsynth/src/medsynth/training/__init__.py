"""Generator training: the family-agnostic training loop (the checkpoint format it writes is
:mod:`medsynth.generators.checkpoint`)."""

from medsynth.training.loop import TrainResult, train_generator

__all__ = ["TrainResult", "train_generator"]
