"""Feature visualization: what the units of a CNN respond to.

- :func:`dataset_examples`: the top-k images of a data set for every unit of a layer (one streaming pass,
  resumable, split between processes under ``torch.distributed``).
- :func:`receptive_field`: the input pixels each unit of a layer sees.
- :func:`filter_visualization`: (guided) backpropagation of :math:`(n_1 + \\dots + n_k)^2` to the image.
- :func:`activation_maximization`: images optimised for a channel, a neuron or a class, with objectives
  that add and scale (:func:`channel`, :func:`neuron`, :func:`class_logit`).
"""

from netvis.features.activation_max import (
    ActivationMaximization,
    Objective,
    activation_maximization,
    channel,
    class_logit,
    jitter,
    neuron,
    random_rotate,
    random_scale,
    standard_transforms,
)
from netvis.features.dataset_examples import DatasetExamples, RunningTopK, dataset_examples, shard_bounds
from netvis.features.filters import FilterVisualization, filter_visualization, nonzero_box, unit_mask
from netvis.features.receptive_field import receptive_field

__all__ = [
    "ActivationMaximization",
    "DatasetExamples",
    "FilterVisualization",
    "Objective",
    "RunningTopK",
    "activation_maximization",
    "channel",
    "class_logit",
    "dataset_examples",
    "filter_visualization",
    "jitter",
    "neuron",
    "nonzero_box",
    "random_rotate",
    "random_scale",
    "receptive_field",
    "shard_bounds",
    "standard_transforms",
    "unit_mask",
]
