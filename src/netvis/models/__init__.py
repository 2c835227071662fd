"""The lecture's architectures: batch normalization, ResNet (and plain twins), DenseNet.

``create(name, **options)`` builds any of them by name; ``list_models()`` names them all.
"""

from netvis.models.batchnorm import BatchNorm1d, BatchNorm2d
from netvis.models.registry import create, get_builder, list_models

__all__ = ["BatchNorm1d", "BatchNorm2d", "create", "get_builder", "list_models"]
