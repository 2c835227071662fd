"""The lecture's architectures: batch normalization, ResNet (and plain twins), DenseNet.

``create(name, **options)`` builds any of them by name; ``list_models()`` names them all.
"""

from netvis.models.batchnorm import BatchNorm1d, BatchNorm2d
from netvis.models.densenet import DenseNet
from netvis.models.plain import PlainNet
from netvis.models.registry import create, get_builder, list_models
from netvis.models.resnet import ResNet

__all__ = ["BatchNorm1d", "BatchNorm2d", "DenseNet", "PlainNet", "ResNet", "create", "get_builder", "list_models"]
