"""Generator training: the one checkpoint format and the family-agnostic training loop."""

from medsynth.training.checkpoint import Checkpoint, load_checkpoint, load_sampling_nets, save_checkpoint
from medsynth.training.loop import TrainResult, train_generator

__all__ = ["Checkpoint", "TrainResult", "load_checkpoint", "load_sampling_nets", "save_checkpoint", "train_generator"]
