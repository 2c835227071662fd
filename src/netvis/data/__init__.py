"""Data sets for netvis: Fashion-MNIST (full or the shipped sample), IDX folders, CIFAR-10, image folders,
synthetic wafer maps with defect masks (:mod:`netvis.data.wafer`).

Start with :func:`load`::

    from netvis.data import load
    train = load("fashion-mnist-sample", "train")      # 2,000 images shipped with netvis
    image, label = train[0]                              # float (1, 28, 28), normalized; int

Every data set carries ``classes``, ``mean``/``std`` (training-split statistics), ``preprocess`` (the
:class:`Preprocess` a checkpoint keeps), ``images`` (``uint8 (N, C, H, W)``) and ``targets``.
:func:`split`, :func:`loader` and :func:`batches` split and batch them deterministically from seeds.
"""

from netvis.data.base import DatasetSubset, TensorImageDataset, channel_stats
from netvis.data.cifar import CIFAR10_CLASSES, load_cifar10, read_cifar_batch
from netvis.data.errors import DataError
from netvis.data.fashion_mnist import (
    FASHION_MNIST_CLASSES,
    SAMPLE_DIR,
    find_fashion_mnist,
    load_fashion_mnist,
    load_fashion_mnist_sample,
    load_idx_folder,
)
from netvis.data.folders import ImageFolderDataset, read_image
from netvis.data.idx import read_idx, read_idx_images, read_idx_labels, read_idx_pair, write_idx
from netvis.data.loaders import batches, loader, split, split_indices
from netvis.data.registry import load, names
from netvis.data.transforms import Preprocess, random_crop, random_hflip
from netvis.data.wafer import WAFER_CLASSES, WaferMapDataset, generate_wafer_maps, load_wafer_maps, load_wafer_sample

__all__ = [
    "CIFAR10_CLASSES",
    "FASHION_MNIST_CLASSES",
    "SAMPLE_DIR",
    "DataError",
    "DatasetSubset",
    "ImageFolderDataset",
    "Preprocess",
    "TensorImageDataset",
    "WAFER_CLASSES",
    "WaferMapDataset",
    "batches",
    "channel_stats",
    "find_fashion_mnist",
    "generate_wafer_maps",
    "load",
    "load_cifar10",
    "load_fashion_mnist",
    "load_fashion_mnist_sample",
    "load_idx_folder",
    "load_wafer_maps",
    "load_wafer_sample",
    "loader",
    "names",
    "random_crop",
    "random_hflip",
    "read_cifar_batch",
    "read_idx",
    "read_idx_images",
    "read_idx_labels",
    "read_idx_pair",
    "read_image",
    "split",
    "split_indices",
    "write_idx",
]
