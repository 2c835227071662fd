"""DenseNet: dense blocks, transition layers, DenseNet-121/169/201/264 and the CIFAR DenseNet-BC.

From "Densely Connected Convolutional Networks" (Huang, Liu, van der Maaten, Weinberger, CVPR 2017).
Inside a dense block, layer :math:`\\ell` sees the feature maps of *all* earlier layers of the block,

.. math::

    x_\\ell = H_\\ell([x_0, x_1, \\ldots, x_{\\ell-1}]),

where :math:`[\\cdot]` is concatenation along the channel axis and :math:`H_\\ell` is
BN-ReLU-1x1 conv (to ``bn_size * k`` channels, the bottleneck) followed by BN-ReLU-3x3 conv (to ``k``
channels, the growth rate). Between blocks a transition layer (BN-ReLU-1x1 conv, then 2x2 average
pooling) shrinks the channel count by the compression factor and halves the resolution.

The state-dict keys equal torchvision's ``DenseNet`` (``features.conv0``,
``features.denseblock1.denselayer1.norm1``, ``features.transition1.conv``, ``features.norm5``,
``classifier``), so its state dicts load with
``strict=True``. Unlike torchvision's, every ReLU here is its own module (the final one, after
``features.norm5``, is ``relu_final``), none is in place, and no ``forward`` calls ``F.relu``.

Example:
    >>> import torch
    >>> from netvis.models.densenet import densenet121
    >>> model = densenet121().eval()
    >>> with torch.no_grad():
    ...     model(torch.randn(1, 3, 64, 64)).shape
    torch.Size([1, 1000])
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.fx
import torch.utils.checkpoint
from torch import Tensor, nn

from netvis._checks import check_int

from ._common import NormLayer, resolve_norm_layer
from ._common import check_input as _check_input
from ._common import make_norm as _make_norm

torch.fx.wrap("_check_input")

__all__ = [
    "DenseLayer",
    "DenseBlock",
    "Transition",
    "DenseNet",
    "densenet121",
    "densenet169",
    "densenet201",
    "densenet264",
    "densenet_bc",
    "densenet_bc_100",
]

_STEMS = ("imagenet", "cifar")


# --------------------------------------------------------------------------------------------------
# private helpers
# --------------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, minimum: int) -> int:
    """Return ``value`` if it is an int ``>= minimum``; otherwise raise a ValueError naming ``name``."""
    return check_int(value, name, minimum=minimum)


def _check_fraction(name: str, value: Any, low: float, high: float, *, include_low: bool,
                    include_high: bool) -> float:
    """Return ``value`` as a float if it lies in the interval, else raise a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number; got {value!r}")
    above = value >= low if include_low else value > low
    below = value <= high if include_high else value < high
    if not (above and below):
        left = "[" if include_low else "("
        right = "]" if include_high else ")"
        raise ValueError(f"{name} must lie in {left}{low}, {high}{right}; got {value!r}")
    return float(value)


@contextlib.contextmanager
def _buffers_kept(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Restore the buffers of ``modules`` (e.g. BN running statistics) on exit.

    Used as the recomputation context of the checkpointed bottleneck, so that recomputing it during
    the backward pass does not update BN's running averages a second time.
    """
    buffers = [b for m in modules for b in m.buffers()]
    saved = [b.detach().clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved, strict=True):
                buffer.copy_(value)


# --------------------------------------------------------------------------------------------------
# blocks
# --------------------------------------------------------------------------------------------------


class DenseLayer(nn.Module):
    """One composite function :math:`H_\\ell` of a dense block (the "B" of DenseNet-B).

    .. math::

        H_\\ell([x_0, \\ldots, x_{\\ell-1}]) =
        \\mathrm{conv}_{3\\times3}(\\mathrm{ReLU}(\\mathrm{BN}(
        \\mathrm{conv}_{1\\times1}(\\mathrm{ReLU}(\\mathrm{BN}([x_0, \\ldots, x_{\\ell-1}]))))))

    The 1x1 bottleneck conv maps the ``in_channels`` channels of the concatenation to
    ``bn_size * growth_rate`` channels; the 3x3 conv (padding 1) maps those to ``growth_rate``
    channels. From "Densely Connected Convolutional Networks" (Huang et al. 2017).

    Args:
        in_channels: channels of the concatenated input, :math:`k_0 + (\\ell-1) k`.
        growth_rate: :math:`k`, channels this layer adds.
        bn_size: bottleneck width as a multiple of ``growth_rate`` (4 in the paper).
        drop_rate: dropout probability after the 3x3 conv (0 disables it).
        norm_layer: constructor ``channels -> nn.Module`` or ``None`` for no normalization (convs
            then carry a bias).
        memory_efficient: recompute the concat-BN-ReLU-1x1 conv part in the backward pass
            (``torch.utils.checkpoint``) instead of storing its activations.

    Shapes:
        input: a list of tensors ``(N, C_i, H, W)`` with ``sum(C_i) == in_channels`` (or one tensor).
        output: ``(N, growth_rate, H, W)``.
    """

    def __init__(self, in_channels: int, growth_rate: int, bn_size: int, drop_rate: float,
                 norm_layer: NormLayer | None, memory_efficient: bool = False) -> None:
        super().__init__()
        bias = norm_layer is None
        width = bn_size * growth_rate
        self.norm1 = _make_norm(norm_layer, in_channels)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, stride=1, bias=bias)
        self.norm2 = _make_norm(norm_layer, width)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, growth_rate, kernel_size=3, stride=1, padding=1, bias=bias)
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.in_channels = in_channels
        self.growth_rate = growth_rate
        self.memory_efficient = memory_efficient

    def bottleneck(self, inputs: Sequence[Tensor]) -> Tensor:
        """Concatenate ``inputs`` along channels, then BN-ReLU-1x1 conv.

        Args:
            inputs: tensors ``(N, C_i, H, W)``.

        Returns:
            ``(N, bn_size * growth_rate, H, W)``.
        """
        x = torch.cat(list(inputs), 1)
        return self.conv1(self.relu1(self.norm1(x)))

    def _bottleneck_varargs(self, *inputs: Tensor) -> Tensor:
        return self.bottleneck(inputs)

    def _checkpoint_contexts(self) -> tuple[contextlib.AbstractContextManager, ...]:
        # forward: nothing special; recomputation: keep BN running statistics as the forward left them
        return contextlib.nullcontext(), _buffers_kept((self.norm1, self.relu1, self.conv1))

    def _use_checkpoint(self, inputs: Sequence[Tensor]) -> bool:
        if not (self.memory_efficient and torch.is_grad_enabled()):
            return False
        if any(t.requires_grad for t in inputs):
            return True
        return any(p.requires_grad for m in (self.norm1, self.conv1) for p in m.parameters())

    def forward(self, inputs: Sequence[Tensor] | Tensor) -> Tensor:
        """Compute the layer's ``growth_rate`` new feature maps from all previous ones.

        Args:
            inputs: the list :math:`[x_0, \\ldots, x_{\\ell-1}]` of ``(N, C_i, H, W)`` tensors, or one tensor.

        Returns:
            ``(N, growth_rate, H, W)``.
        """
        if not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        if self._use_checkpoint(inputs):
            y = torch.utils.checkpoint.checkpoint(
                self._bottleneck_varargs, *inputs, use_reentrant=False, context_fn=self._checkpoint_contexts
            )
        else:
            y = self.bottleneck(inputs)
        y = self.conv2(self.relu2(self.norm2(y)))
        return self.dropout(y)


class DenseBlock(nn.ModuleDict):
    """A dense block: ``num_layers`` :class:`DenseLayer` s, each fed the concatenation of all before it.

    Layer :math:`\\ell` (1-based) sees :math:`k_0 + (\\ell-1)k` channels; the block returns the
    concatenation :math:`[x_0, x_1, \\ldots, x_L]` with :math:`k_0 + Lk` channels. The layers are
    named ``denselayer1``, ``denselayer2``, ... as in torchvision. From "Densely Connected
    Convolutional Networks" (Huang et al. 2017).

    Args:
        num_layers: :math:`L`.
        in_channels: :math:`k_0`, channels of the block's input.
        growth_rate: :math:`k`.
        bn_size: bottleneck width as a multiple of ``growth_rate``.
        drop_rate: dropout probability inside every layer.
        norm_layer: constructor ``channels -> nn.Module`` or ``None``.
        memory_efficient: checkpoint every layer's bottleneck.

    Shapes:
        input: ``(N, k_0, H, W)``; output: ``(N, k_0 + L k, H, W)``.
    """

    def __init__(self, num_layers: int, in_channels: int, growth_rate: int, bn_size: int, drop_rate: float,
                 norm_layer: NormLayer | None, memory_efficient: bool = False) -> None:
        super().__init__()
        for i in range(num_layers):
            layer = DenseLayer(in_channels + i * growth_rate, growth_rate, bn_size, drop_rate, norm_layer,
                               memory_efficient)
            self.add_module(f"denselayer{i + 1}", layer)
        self.in_channels = in_channels
        self.out_channels = in_channels + num_layers * growth_rate

    def forward(self, x: Tensor) -> Tensor:
        """Run the layers with dense connectivity.

        Args:
            x: ``(N, k_0, H, W)``.

        Returns:
            ``(N, k_0 + L k, H, W)``, the concatenation of the input and every layer's output.
        """
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """A transition layer between dense blocks: BN-ReLU-1x1 conv, then 2x2 average pooling (stride 2).

    The 1x1 conv applies the compression :math:`\\theta`: ``m`` input channels become
    :math:`\\lfloor \\theta m \\rfloor`. Submodules ``norm``, ``relu``, ``conv``, ``pool`` as in
    torchvision. From "Densely Connected Convolutional Networks" (Huang et al. 2017).

    Args:
        in_channels: ``m``.
        out_channels: :math:`\\lfloor \\theta m \\rfloor`.
        norm_layer: constructor ``channels -> nn.Module`` or ``None``.

    Shapes:
        input: ``(N, m, H, W)``; output: ``(N, out_channels, floor(H/2), floor(W/2))``.
    """

    def __init__(self, in_channels: int, out_channels: int, norm_layer: NormLayer | None) -> None:
        super().__init__()
        self.norm = _make_norm(norm_layer, in_channels)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, bias=norm_layer is None)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


# --------------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------------


class DenseNet(nn.Module):
    """DenseNet-BC from "Densely Connected Convolutional Networks" (Huang et al. 2017).

    ``features`` = stem, then dense blocks separated by transition layers, then ``norm5``; the head is
    ``relu_final`` - global average pooling - flatten - ``classifier`` (a linear layer). A block
    with input :math:`k_0` channels and :math:`L` layers outputs :math:`k_0 + Lk`; a transition keeps
    :math:`\\lfloor \\theta (k_0 + Lk) \\rfloor` of them.

    Args:
        growth_rate: :math:`k`, channels each dense layer adds (32 for the ImageNet models, 12 for CIFAR).
        block_config: number of layers of each dense block, e.g. ``(6, 12, 24, 16)`` for DenseNet-121.
        num_init_features: channels of the stem's output; ``None`` means 64 for the ``"imagenet"`` stem
            and ``2 * growth_rate`` for the ``"cifar"`` stem.
        bn_size: bottleneck width of the 1x1 conv as a multiple of ``growth_rate`` (4 in the paper).
        drop_rate: dropout probability after each dense layer's 3x3 conv, in ``[0, 1)``.
        compression: :math:`\\theta` in ``(0, 1]``, the fraction of channels a transition layer keeps.
        num_classes: outputs of the classifier.
        in_channels: channels of the input images.
        stem: ``"imagenet"`` (7x7/2 conv, BN, ReLU, 3x3/2 max-pool) or ``"cifar"`` (one 3x3 conv,
            stride 1, no pooling, as in the paper's CIFAR/SVHN models).
        norm_layer: ``"torch"`` (``torch.nn.BatchNorm2d``), ``"netvis"`` (netvis's own BatchNorm2d),
            ``"none"``/``None`` (no normalization; convs then carry a bias), or a callable
            ``channels -> nn.Module``.
        memory_efficient: recompute every dense layer's concat-BN-ReLU-1x1 conv in the backward pass
            (gradient checkpointing) - same outputs and gradients, less activation memory, more compute.
            Not supported by ``torch.fx.symbolic_trace`` (trace a ``memory_efficient=False`` twin).

    Attributes:
        in_channels, num_classes, growth_rate, block_config, num_features (channels entering the
        head), arch (builder name) and ``config``, a dict of every constructor option such that
        ``DenseNet(**model.config)`` rebuilds the architecture (store it next to a checkpoint).

    Shapes:
        input: ``(N, in_channels, H, W)``; output: ``(N, num_classes)`` logits.

    Raises:
        ValueError: an invalid option; the message names it.
    """

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        num_init_features: int | None = None,
        bn_size: int = 4,
        drop_rate: float = 0.0,
        compression: float = 0.5,
        num_classes: int = 1000,
        in_channels: int = 3,
        stem: str = "imagenet",
        norm_layer: str | NormLayer | None = "torch",
        memory_efficient: bool = False,
    ) -> None:
        super().__init__()
        _check_int("growth_rate", growth_rate, 1)
        if isinstance(block_config, (str, bytes)) or not isinstance(block_config, Sequence) \
                or not block_config:
            raise ValueError(
                f"block_config must be a non-empty sequence of layer counts; got {block_config!r}"
            )
        for n in block_config:
            _check_int("block_config (every entry)", n, 1)
        block_config = tuple(block_config)
        if stem not in _STEMS:
            raise ValueError(f"stem must be one of {', '.join(map(repr, _STEMS))}; got {stem!r}")
        if num_init_features is None:
            num_init_features = 64 if stem == "imagenet" else 2 * growth_rate
        _check_int("num_init_features", num_init_features, 1)
        _check_int("bn_size", bn_size, 1)
        drop_rate = _check_fraction("drop_rate", drop_rate, 0.0, 1.0, include_low=True, include_high=False)
        compression = _check_fraction(
            "compression", compression, 0.0, 1.0, include_low=False, include_high=True
        )
        _check_int("num_classes", num_classes, 1)
        _check_int("in_channels", in_channels, 1)
        if not isinstance(memory_efficient, bool):
            raise ValueError(f"memory_efficient must be a bool; got {memory_efficient!r}")
        norm = resolve_norm_layer(norm_layer)

        self.config: dict[str, Any] = {
            "growth_rate": growth_rate,
            "block_config": block_config,
            "num_init_features": num_init_features,
            "bn_size": bn_size,
            "drop_rate": drop_rate,
            "compression": compression,
            "num_classes": num_classes,
            "in_channels": in_channels,
            "stem": stem,
            "norm_layer": norm_layer,
            "memory_efficient": memory_efficient,
        }
        self.arch = "densenet"
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.growth_rate = growth_rate
        self.block_config = block_config
        self.memory_efficient = memory_efficient

        bias = norm is None
        if stem == "imagenet":
            layers: list[tuple[str, nn.Module]] = [
                ("conv0", nn.Conv2d(in_channels, num_init_features, kernel_size=7, stride=2, padding=3,
                                    bias=bias)),
                ("norm0", _make_norm(norm, num_init_features)),
                ("relu0", nn.ReLU()),
                ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
            ]
        else:
            layers = [("conv0", nn.Conv2d(in_channels, num_init_features, kernel_size=3, stride=1, padding=1,
                                          bias=bias))]
        channels = num_init_features
        for i, num_layers in enumerate(block_config):
            block = DenseBlock(num_layers, channels, growth_rate, bn_size, drop_rate, norm, memory_efficient)
            layers.append((f"denseblock{i + 1}", block))
            channels = block.out_channels
            if i != len(block_config) - 1:
                out = int(math.floor(compression * channels))
                if out < 1:
                    raise ValueError(
                        f"compression={compression} leaves no channels after dense block {i + 1}"
                    )
                layers.append((f"transition{i + 1}", Transition(channels, out, norm)))
                channels = out
        layers.append(("norm5", _make_norm(norm, channels)))
        self.features = nn.Sequential(OrderedDict(layers))
        self.num_features = channels

        self.relu_final = nn.ReLU()
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(channels, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """Stem, dense blocks and transitions, and ``norm5`` (before the final ReLU).

        Args:
            x: ``(N, in_channels, H, W)`` images.

        Returns:
            ``(N, num_features, H', W')``; ``H' = H / 32`` for the ImageNet stem with four blocks,
            ``H / 4`` for the CIFAR stem with three.

        Raises:
            ValueError: ``x`` is not 4-D or has the wrong number of channels.
        """
        x = _check_input(x, self.in_channels, self.arch)
        return self.features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Final ReLU, global average pooling, flatten and the linear classifier.

        Args:
            x: ``(N, num_features, H', W')``, the output of :meth:`forward_features`.
            pre_logits: return the pooled ``(N, num_features)`` features instead of the logits.

        Returns:
            ``(N, num_classes)`` logits, or ``(N, num_features)`` when ``pre_logits``.
        """
        x = self.flatten(self.global_pool(self.relu_final(x)))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        """Classify a batch of images.

        Args:
            x: ``(N, in_channels, H, W)``.

        Returns:
            ``(N, num_classes)`` logits.
        """
        return self.forward_head(self.forward_features(x))


# --------------------------------------------------------------------------------------------------
# builders
# --------------------------------------------------------------------------------------------------

_FIXED = ("growth_rate", "block_config")


def _densenet(arch: str, growth_rate: int, block_config: Sequence[int], options: dict[str, Any]) -> DenseNet:
    fixed = sorted(set(options) & set(_FIXED))
    if fixed:
        raise ValueError(f"{arch} fixes {', '.join(fixed)}; build DenseNet(...) directly to change it")
    model = DenseNet(growth_rate=growth_rate, block_config=block_config, **options)
    model.arch = arch
    return model


def densenet121(*, num_classes: int = 1000, in_channels: int = 3,
                norm_layer: str | NormLayer | None = "torch", memory_efficient: bool = False,
                **options: Any) -> DenseNet:
    """DenseNet-121 (blocks 6-12-24-16, k=32, 7,978,856 parameters at 1000 classes).

    From "Densely Connected Convolutional Networks" (Huang et al. 2017). Accepts torchvision's
    ``densenet121`` state dict with ``strict=True``.

    Args:
        num_classes: classifier outputs.
        in_channels: input image channels.
        norm_layer: ``"torch"``, ``"netvis"``, ``"none"``/``None`` or a callable.
        memory_efficient: checkpoint the bottlenecks (less memory, same results).
        **options: further :class:`DenseNet` options (``drop_rate``, ``compression``, ``stem``, ...).

    Returns:
        The randomly initialised model, in training mode.
    """
    return _densenet("densenet121", 32, (6, 12, 24, 16), dict(
        num_classes=num_classes, in_channels=in_channels, norm_layer=norm_layer,
        memory_efficient=memory_efficient, **options))


def densenet169(*, num_classes: int = 1000, in_channels: int = 3,
                norm_layer: str | NormLayer | None = "torch", memory_efficient: bool = False,
                **options: Any) -> DenseNet:
    """DenseNet-169 (blocks 6-12-32-32, k=32, 14,149,480 parameters at 1000 classes).

    From "Densely Connected Convolutional Networks" (Huang et al. 2017). Accepts torchvision's
    ``densenet169`` state dict with ``strict=True``.

    Args:
        num_classes: classifier outputs.
        in_channels: input image channels.
        norm_layer: ``"torch"``, ``"netvis"``, ``"none"``/``None`` or a callable.
        memory_efficient: checkpoint the bottlenecks (less memory, same results).
        **options: further :class:`DenseNet` options.

    Returns:
        The randomly initialised model, in training mode.
    """
    return _densenet("densenet169", 32, (6, 12, 32, 32), dict(
        num_classes=num_classes, in_channels=in_channels, norm_layer=norm_layer,
        memory_efficient=memory_efficient, **options))


def densenet201(*, num_classes: int = 1000, in_channels: int = 3,
                norm_layer: str | NormLayer | None = "torch", memory_efficient: bool = False,
                **options: Any) -> DenseNet:
    """DenseNet-201 (blocks 6-12-48-32, k=32, 20,013,928 parameters at 1000 classes).

    From "Densely Connected Convolutional Networks" (Huang et al. 2017). Accepts torchvision's
    ``densenet201`` state dict with ``strict=True``.

    Args:
        num_classes: classifier outputs.
        in_channels: input image channels.
        norm_layer: ``"torch"``, ``"netvis"``, ``"none"``/``None`` or a callable.
        memory_efficient: checkpoint the bottlenecks (less memory, same results).
        **options: further :class:`DenseNet` options.

    Returns:
        The randomly initialised model, in training mode.
    """
    return _densenet("densenet201", 32, (6, 12, 48, 32), dict(
        num_classes=num_classes, in_channels=in_channels, norm_layer=norm_layer,
        memory_efficient=memory_efficient, **options))


def densenet264(*, num_classes: int = 1000, in_channels: int = 3,
                norm_layer: str | NormLayer | None = "torch", memory_efficient: bool = False,
                **options: Any) -> DenseNet:
    """DenseNet-264 (blocks 6-12-64-48, k=32, 33,337,704 parameters at 1000 classes).

    From "Densely Connected Convolutional Networks" (Huang et al. 2017). torchvision has no builder
    for it, but ``torchvision.models.DenseNet(32, (6, 12, 64, 48), 64)`` has the same keys.

    Args:
        num_classes: classifier outputs.
        in_channels: input image channels.
        norm_layer: ``"torch"``, ``"netvis"``, ``"none"``/``None`` or a callable.
        memory_efficient: checkpoint the bottlenecks (less memory, same results).
        **options: further :class:`DenseNet` options.

    Returns:
        The randomly initialised model, in training mode.
    """
    return _densenet("densenet264", 32, (6, 12, 64, 48), dict(
        num_classes=num_classes, in_channels=in_channels, norm_layer=norm_layer,
        memory_efficient=memory_efficient, **options))


def densenet_bc(depth: int = 100, growth_rate: int = 12, *, num_blocks: int = 3, num_classes: int = 10,
                in_channels: int = 3, compression: float = 0.5, drop_rate: float = 0.0,
                norm_layer: str | NormLayer | None = "torch", memory_efficient: bool = False) -> DenseNet:
    """A CIFAR-style DenseNet-BC of a given depth (bottleneck layers and compression).

    The paper's CIFAR/SVHN models: a 3x3 conv stem with ``2 * growth_rate`` channels, ``num_blocks``
    dense blocks of ``n`` bottleneck layers each (two convs per layer), compression 0.5 in the
    transitions, and a linear classifier. Counting the stem conv, the transitions' convs and the
    classifier, the depth is

    .. math::

        \\text{depth} = 2 n B + B + 1, \\quad\\text{i.e. } 6n + 4 \\text{ for } B = 3 \\text{ blocks}.

    From "Densely Connected Convolutional Networks" (Huang et al. 2017): DenseNet-BC with
    (depth, k) = (100, 12), (250, 24), (190, 40).

    Args:
        depth: total weighted layers, ``2 n num_blocks + num_blocks + 1`` for an integer ``n >= 1``.
        growth_rate: :math:`k`.
        num_blocks: number of dense blocks (3 in the paper).
        num_classes: classifier outputs (10 for CIFAR-10).
        in_channels: input image channels (1 for Fashion-MNIST).
        compression: :math:`\\theta`, fraction of channels the transitions keep.
        drop_rate: dropout after each dense layer (the paper uses 0.2 without data augmentation).
        norm_layer: ``"torch"``, ``"netvis"``, ``"none"``/``None`` or a callable.
        memory_efficient: checkpoint the bottlenecks.

    Returns:
        The randomly initialised model, in training mode.

    Raises:
        ValueError: ``depth`` does not have the form above, or another option is invalid.
    """
    _check_int("num_blocks", num_blocks, 1)
    _check_int("depth", depth, 1)
    n, rest = divmod(depth - num_blocks - 1, 2 * num_blocks)
    if rest != 0 or n < 1:
        raise ValueError(
            f"depth must equal 2*n*num_blocks + num_blocks + 1 (6n+4 for 3 blocks) for an integer n >= 1; "
            f"got depth={depth} with num_blocks={num_blocks}"
        )
    model = DenseNet(growth_rate=growth_rate, block_config=(n,) * num_blocks, num_classes=num_classes,
                     in_channels=in_channels, stem="cifar", compression=compression, drop_rate=drop_rate,
                     norm_layer=norm_layer, memory_efficient=memory_efficient)
    model.arch = f"densenet_bc_{depth}_k{growth_rate}"
    return model


def densenet_bc_100(*, num_classes: int = 10, in_channels: int = 3, drop_rate: float = 0.0,
                    norm_layer: str | NormLayer | None = "torch", memory_efficient: bool = False) -> DenseNet:
    """DenseNet-BC (L=100, k=12) for 32x32 images: 3 blocks of 16 bottleneck layers, 769,162 parameters.

    The paper's table of CIFAR results lists it with 0.8M parameters. From "Densely Connected
    Convolutional Networks" (Huang et al. 2017).

    Args:
        num_classes: classifier outputs (10 for CIFAR-10).
        in_channels: input image channels.
        drop_rate: dropout after each dense layer.
        norm_layer: ``"torch"``, ``"netvis"``, ``"none"``/``None`` or a callable.
        memory_efficient: checkpoint the bottlenecks.

    Returns:
        The randomly initialised model, in training mode.
    """
    model = densenet_bc(100, 12, num_classes=num_classes, in_channels=in_channels, drop_rate=drop_rate,
                        norm_layer=norm_layer, memory_efficient=memory_efficient)
    model.arch = "densenet_bc_100"
    return model
