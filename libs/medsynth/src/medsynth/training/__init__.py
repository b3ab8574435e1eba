"""Generator training: configuration, the one checkpoint format, and the joint image + mask GAN loop."""

from medsynth.training.checkpoint import Checkpoint, load_checkpoint, load_generator, save_checkpoint
from medsynth.training.config import TrainConfig
from medsynth.training.gan_loop import TrainResult, train_gan

__all__ = [
    "Checkpoint",
    "TrainConfig",
    "TrainResult",
    "load_checkpoint",
    "load_generator",
    "save_checkpoint",
    "train_gan",
]
