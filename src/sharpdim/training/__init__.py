"""Training (the only loop-aware code): models, offline datasets, training loop, EoS monitor."""

from sharpdim.training.checkpoint import load_checkpoint, save_checkpoint
from sharpdim.training.datasets import Dataset, load_dataset
from sharpdim.training.loop import StepMonitor, TrainConfig, TrainResult, train
from sharpdim.training.losses import cross_entropy_loss, get_loss, mse_loss
from sharpdim.training.models import DeepScalarLinear, build_mlp, build_transformer
from sharpdim.training.monitor import EoSMonitor, EoSRecord
from sharpdim.training.optimizers import make_optimizer, stability_threshold
from sharpdim.training.trajectory import Trajectory, capture_backward, capture_forward

__all__ = [
    "Dataset",
    "DeepScalarLinear",
    "EoSMonitor",
    "EoSRecord",
    "StepMonitor",
    "TrainConfig",
    "TrainResult",
    "Trajectory",
    "build_mlp",
    "build_transformer",
    "capture_backward",
    "capture_forward",
    "cross_entropy_loss",
    "get_loss",
    "load_checkpoint",
    "load_dataset",
    "make_optimizer",
    "mse_loss",
    "save_checkpoint",
    "stability_threshold",
    "train",
]
