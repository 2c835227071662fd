"""netvis: network visualization for PyTorch CNNs.

The lecture end to end: batch normalization, ResNet and DenseNet (:mod:`netvis.models`), and the
methods that show what a trained CNN looks at and what its units respond to.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
