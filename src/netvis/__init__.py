"""netvis: network visualization for PyTorch CNNs.

The lecture end to end: batch normalization, ResNet and DenseNet (:mod:`netvis.models`), and the
methods that show what a trained CNN looks at and what its units respond to.

``netvis.load_checkpoint(path_or_name)`` loads a trained model (``"fashion-mnist-small"`` ships with
netvis); it is imported on first use, so ``import netvis`` stays light.
"""

import importlib

__version__ = "0.1.0"

# Imported on first access (PEP 562) so that ``import netvis`` does not import torch.
_LAZY = {
    "load_checkpoint": "netvis.train.checkpoint",
    "CheckpointError": "netvis.train.checkpoint",
}

__all__ = ["__version__", "load_checkpoint", "CheckpointError"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'netvis' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
