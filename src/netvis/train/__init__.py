"""Training, evaluation and checkpoints: what ``netvis train`` and ``netvis evaluate`` run.

* :func:`train` with a :class:`TrainConfig`: seeded, resumable, mixed precision on GPUs,
  data-parallel under torchrun (:mod:`netvis.train.distributed`).
* :func:`evaluate`: accuracy, loss and confusion matrix.
* :func:`load_checkpoint` / :func:`save_checkpoint`: checkpoints written atomically and read safely.
"""

from netvis.train.augment import CropFlip
from netvis.train.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointNotFoundError,
    export_checkpoint,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    strip_training_state,
)
from netvis.train.curves import plot_curves
from netvis.train.evaluate import Evaluation, confusion_matrix, evaluate, evaluate_checkpoint, with_preprocess
from netvis.train.trainer import TrainConfig, TrainResult, parse_model_option, resume_config, train

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CheckpointNotFoundError",
    "CropFlip",
    "Evaluation",
    "TrainConfig",
    "TrainResult",
    "confusion_matrix",
    "evaluate",
    "evaluate_checkpoint",
    "export_checkpoint",
    "load_checkpoint",
    "parse_model_option",
    "plot_curves",
    "read_checkpoint",
    "resume_config",
    "save_checkpoint",
    "strip_training_state",
    "train",
    "with_preprocess",
]
