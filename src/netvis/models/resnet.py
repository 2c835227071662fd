"""Residual networks: ImageNet-style ResNet-18/34/50/101/152 and CIFAR-style 6n+2-layer ResNets.

A residual block learns a correction :math:`\\mathcal{F}` to its input instead of a whole new mapping,

.. math::

    y = \\sigma\\big(\\mathcal{F}(x) + \\mathrm{shortcut}(x)\\big),

where the shortcut is the identity when shapes agree and a strided 1x1 convolution followed by a
normalization layer (a *projection*, option B) when a stage halves the resolution and widens the channels.

Papers:
    "Deep Residual Learning for Image Recognition", He, Zhang, Ren and Sun, 2015 (CVPR 2016) — the
    post-activation blocks (conv-BN-ReLU), the bottleneck block, ResNet-18 to 152 and the CIFAR-10 nets.

    "Identity Mappings in Deep Residual Networks", He, Zhang, Ren and Sun, 2016 (ECCV 2016) — the
    pre-activation blocks (BN-ReLU-conv) selected here with ``preact=True``.

netvis conventions: every activation is its own module (no ``inplace=True``, no reused ReLU, no
functional ReLU in ``forward``), the model splits into :meth:`ResNet.forward_features` and
:meth:`ResNet.forward_head`, and the defaults give state-dict keys and shapes equal to torchvision's, so
``torchvision.models.resnet50(...).state_dict()`` loads with ``strict=True`` into :func:`resnet50`.

Example:
    >>> import torch
    >>> from netvis.models.resnet import resnet18, resnet20_cifar
    >>> resnet18()(torch.randn(1, 3, 64, 64)).shape
    torch.Size([1, 1000])
    >>> resnet20_cifar(in_channels=1).forward_features(torch.randn(1, 1, 28, 28)).shape
    torch.Size([1, 64, 7, 7])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from netvis._checks import check_positive_int

from ._common import NormLayer, resolve_norm_layer
from ._common import check_input as _check_input
from ._common import make_norm as _make_norm

torch.fx.wrap("_check_input")

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "PreActBasicBlock",
    "PreActBottleneck",
    "ZeroPadShortcut",
    "ResNet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "cifar_blocks_per_stage",
    "resnet_cifar",
    "resnet20_cifar",
    "resnet32_cifar",
    "resnet44_cifar",
    "resnet56_cifar",
    "resnet110_cifar",
]

ActLayer = Callable[[], nn.Module]

VARIANTS = ("v1", "v1.5")
STEMS = ("imagenet", "cifar")
SHORTCUTS = ("A", "B")
BLOCKS = ("basic", "bottleneck")


# --------------------------------------------------------------------------------------------------
# private helpers
# --------------------------------------------------------------------------------------------------


def _check_choice(option: str, value: Any, allowed: Sequence[Any]) -> None:
    """Raise ``ValueError`` naming ``option`` and its allowed values unless ``value`` is one of them."""
    if not any(value == a and type(value) is type(a) for a in allowed):
        choices = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{option} must be one of {choices}; got {value!r}")


def _check_positive_int(option: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is an ``int`` (not a ``bool``) of at least 1."""
    check_positive_int(value, option)


def _check_stages(
    layers: Sequence[int], stage_channels: Sequence[int] | None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Validate the per-stage block counts and channels; return both as tuples.

    ``stage_channels=None`` means the first ``len(layers)`` of ``(64, 128, 256, 512)``.
    """
    layers = tuple(layers)
    if not layers:
        raise ValueError("layers must list at least one stage")
    for n in layers:
        _check_positive_int("layers[i]", n)
    if stage_channels is None:
        if len(layers) > 4:
            raise ValueError("stage_channels is required for more than 4 stages")
        stage_channels = (64, 128, 256, 512)[: len(layers)]
    stage_channels = tuple(stage_channels)
    for c in stage_channels:
        _check_positive_int("stage_channels[i]", c)
    if len(stage_channels) != len(layers):
        raise ValueError(
            f"stage_channels ({len(stage_channels)} values) and layers ({len(layers)} values) must have "
            "the same length"
        )
    return layers, stage_channels


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1, bias: bool = False):
    """3x3 convolution with padding 1, so that ``stride=1`` keeps the spatial size."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, groups=groups, bias=bias)


def _conv1x1(in_channels: int, out_channels: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """1x1 convolution (channel mixing; with ``stride=2`` it also subsamples)."""
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=bias)


def _make_act(act_layer: ActLayer) -> nn.Module:
    """A fresh activation module; in-place activations are refused (they break hooks and saliency)."""
    act = act_layer()
    if not isinstance(act, nn.Module):
        raise ValueError(f"act_layer must build an nn.Module, got {type(act).__name__}")
    if getattr(act, "inplace", False):
        raise ValueError("act_layer must not build in-place activations (inplace=True); netvis needs "
                         "each activation's input and output intact for hooks and saliency")
    return act


def _zero_init_last(norm: nn.Module | None, conv: nn.Conv2d) -> None:
    """Make a residual branch output zero at init: zero ``norm``'s scale if it has one, else ``conv``.

    Pre-activation blocks end in a conv, not a norm: they pass ``norm=None``.
    """
    weight = getattr(norm, "weight", None)
    if isinstance(weight, nn.Parameter):
        nn.init.zeros_(weight)
    else:
        nn.init.zeros_(conv.weight)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)


def _stem_modules(
    stem: str, in_channels: int, out_channels: int, norm: NormLayer | None, act_layer: ActLayer
) -> tuple[nn.Conv2d, nn.Module, nn.Module, nn.Module | None]:
    """Build the stem: ``(conv1, bn1, relu, maxpool)``; ``maxpool`` is ``None`` for the CIFAR stem.

    ``"imagenet"``: 7x7 stride-2 conv, norm, ReLU, 3x3 stride-2 max-pool (a 224x224 image becomes 56x56).
    ``"cifar"``: 3x3 stride-1 conv, norm, ReLU and no pooling (a 32x32 image stays 32x32).
    """
    bias = norm is None
    if stem == "imagenet":
        conv = nn.Conv2d(in_channels, out_channels, 7, stride=2, padding=3, bias=bias)
        pool: nn.Module | None = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    else:
        conv = nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1, bias=bias)
        pool = None
    return conv, _make_norm(norm, out_channels), _make_act(act_layer), pool


def _init_convs(model: nn.Module) -> None:
    """He (Kaiming) normal initialisation, fan-out mode, for every convolution; zero conv biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------------
# blocks
# --------------------------------------------------------------------------------------------------


class ZeroPadShortcut(nn.Module):
    """Parameter-free shortcut (option A of He et al. 2015): subsample, then append zero channels.

    .. math::

        \\mathrm{shortcut}(x) = \\big[x_{:, :, ::s, ::s};\\ 0\\big] \\in \\mathbb{R}^{N \\times C_{out}
        \\times \\lceil H/s \\rceil \\times \\lceil W/s \\rceil}

    Args:
        in_channels: channels ``C_in`` of the input.
        out_channels: channels ``C_out >= C_in`` of the output; the last ``C_out - C_in`` are zero.
        stride: spatial subsampling factor ``s``.

    Shape:
        ``(N, C_in, H, W) -> (N, C_out, ceil(H/s), ceil(W/s))``, matching a padded 3x3 conv of stride ``s``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(
                f"shortcut='A' can only widen: out_channels ({out_channels}) < in_channels ({in_channels}); "
                "use shortcut='B'"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Subsample ``x`` by ``stride`` and pad it with zero channels up to ``out_channels``."""
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.out_channels - self.in_channels))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or projection) shortcut, post-activation (He et al. 2015).

    .. math::

        y = \\mathrm{ReLU}\\big(\\mathrm{BN}(W_2 * \\mathrm{ReLU}(\\mathrm{BN}(W_1 * x)))
        + \\mathrm{shortcut}(x)\\big)

    From "Deep Residual Learning for Image Recognition" (He et al., 2015); used by ResNet-18/34 and the
    CIFAR ResNets. Submodules: ``conv1, bn1, relu1, conv2, bn2, downsample, relu_out``.

    Args:
        inplanes: input channels.
        planes: output channels (``expansion = 1``).
        stride: stride of ``conv1``; 2 halves height and width.
        downsample: shortcut module for when the shape changes (e.g. a 1x1 conv + norm); ``None`` means
            the identity.
        norm_layer: ``"torch"``, ``"netvis"``, ``"none"``/``None`` or a callable ``channels -> module``.
            Without normalization the convolutions get a bias.
        act_layer: a callable building a fresh activation module (default ``nn.ReLU``).

    Shape:
        ``(N, inplanes, H, W) -> (N, planes, ceil(H/stride), ceil(W/stride))``.
    """

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        norm_layer: str | NormLayer | None = "torch",
        act_layer: ActLayer = nn.ReLU,
    ) -> None:
        super().__init__()
        norm = resolve_norm_layer(norm_layer)
        bias = norm is None
        self.conv1 = _conv3x3(inplanes, planes, stride, bias=bias)
        self.bn1 = _make_norm(norm, planes)
        self.relu1 = _make_act(act_layer)
        self.conv2 = _conv3x3(planes, planes, bias=bias)
        self.bn2 = _make_norm(norm, planes)
        self.downsample = downsample
        self.relu_out = _make_act(act_layer)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block: ``relu_out(bn2(conv2(relu1(bn1(conv1(x))))) + shortcut(x))``."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu1(out)
        out = self.conv2(out)
        out = self.bn2(out)
        out = out + identity
        return self.relu_out(out)

    def zero_init_last(self) -> None:
        """Zero the residual branch's last scale (``bn2.weight``) so the block starts as the identity map."""
        _zero_init_last(self.bn2, self.conv2)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) with a shortcut, post-activation (He et al. 2015).

    .. math::

        y = \\mathrm{ReLU}\\big(\\mathrm{BN}(W_3 * \\mathrm{ReLU}(\\mathrm{BN}(W_2 *
        \\mathrm{ReLU}(\\mathrm{BN}(W_1 * x))))) + \\mathrm{shortcut}(x)\\big)

    From "Deep Residual Learning for Image Recognition" (He et al., 2015); used by ResNet-50/101/152.
    The 1x1 convolutions cut the channels to ``width`` for the costly 3x3 one and restore
    ``planes * 4`` afterwards. Submodules: ``conv1, bn1, relu1, conv2, bn2, relu2, conv3, bn3,
    downsample, relu_out``.

    Args:
        inplanes: input channels.
        planes: bottleneck planes; the output has ``planes * expansion`` (= ``4 * planes``) channels.
        stride: 2 halves height and width; where it is applied depends on ``variant``.
        downsample: shortcut module, ``None`` for the identity.
        variant: ``"v1.5"`` (stride in the 3x3 ``conv2``, torchvision's choice, more accurate) or ``"v1"``
            (stride in the first 1x1 ``conv1``, as in the 2015 paper, which skips 3/4 of the input pixels).
        groups: groups of the 3x3 convolution (ResNeXt when > 1).
        base_width: width per group; ``width = int(planes * base_width / 64) * groups``.
        norm_layer: ``"torch"``, ``"netvis"``, ``"none"``/``None`` or a callable ``channels -> module``.
        act_layer: a callable building a fresh activation module (default ``nn.ReLU``).

    Shape:
        ``(N, inplanes, H, W) -> (N, 4 * planes, ceil(H/stride), ceil(W/stride))``.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        variant: str = "v1.5",
        groups: int = 1,
        base_width: int = 64,
        norm_layer: str | NormLayer | None = "torch",
        act_layer: ActLayer = nn.ReLU,
    ) -> None:
        super().__init__()
        _check_choice("variant", variant, VARIANTS)
        norm = resolve_norm_layer(norm_layer)
        bias = norm is None
        width = int(planes * (base_width / 64.0)) * groups
        stride1, stride2 = (stride, 1) if variant == "v1" else (1, stride)
        self.conv1 = _conv1x1(inplanes, width, stride1, bias=bias)
        self.bn1 = _make_norm(norm, width)
        self.relu1 = _make_act(act_layer)
        self.conv2 = _conv3x3(width, width, stride2, groups=groups, bias=bias)
        self.bn2 = _make_norm(norm, width)
        self.relu2 = _make_act(act_layer)
        self.conv3 = _conv1x1(width, planes * self.expansion, bias=bias)
        self.bn3 = _make_norm(norm, planes * self.expansion)
        self.downsample = downsample
        self.relu_out = _make_act(act_layer)
        self.stride = stride
        self.variant = variant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block: ``relu_out(bn3(conv3(...relu1(bn1(conv1(x)))...)) + shortcut(x))``."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu1(out)
        out = self.conv2(out)
        out = self.bn2(out)
        out = self.relu2(out)
        out = self.conv3(out)
        out = self.bn3(out)
        out = out + identity
        return self.relu_out(out)

    def zero_init_last(self) -> None:
        """Zero ``bn3.weight`` so the block starts as the identity map (Goyal et al. 2017's trick)."""
        _zero_init_last(self.bn3, self.conv3)


class PreActBasicBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv twice, nothing after the addition (He et al. 2016).

    .. math::

        y = x + W_2 * \\mathrm{ReLU}(\\mathrm{BN}(W_1 * \\mathrm{ReLU}(\\mathrm{BN}(x))))

    From "Identity Mappings in Deep Residual Networks" (He et al., 2016): with no ReLU after the sum,
    the shortcut path from any block to any later one is a pure identity. When the shape changes, the
    projection shortcut reads the *pre-activated* input ``ReLU(BN(x))`` and is a plain strided 1x1 conv
    (no norm: the next block normalizes). Submodules: ``bn1, relu1, conv1, bn2, relu2, conv2, downsample``.

    Args:
        inplanes: input channels (``bn1`` normalizes these).
        planes: output channels.
        stride: stride of ``conv1``.
        downsample: shortcut module applied to ``ReLU(BN(x))``; ``None`` for the identity on ``x``.
        norm_layer: ``"torch"``, ``"netvis"``, ``"none"``/``None`` or a callable ``channels -> module``.
        act_layer: a callable building a fresh activation module (default ``nn.ReLU``).

    Shape:
        ``(N, inplanes, H, W) -> (N, planes, ceil(H/stride), ceil(W/stride))``.
    """

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        norm_layer: str | NormLayer | None = "torch",
        act_layer: ActLayer = nn.ReLU,
    ) -> None:
        super().__init__()
        norm = resolve_norm_layer(norm_layer)
        bias = norm is None
        self.bn1 = _make_norm(norm, inplanes)
        self.relu1 = _make_act(act_layer)
        self.conv1 = _conv3x3(inplanes, planes, stride, bias=bias)
        self.bn2 = _make_norm(norm, planes)
        self.relu2 = _make_act(act_layer)
        self.conv2 = _conv3x3(planes, planes, bias=bias)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block: ``conv2(relu2(bn2(conv1(relu1(bn1(x)))))) + shortcut``."""
        out = self.bn1(x)
        out = self.relu1(out)
        shortcut = x if self.downsample is None else self.downsample(out)
        out = self.conv1(out)
        out = self.bn2(out)
        out = self.relu2(out)
        out = self.conv2(out)
        return out + shortcut

    def zero_init_last(self) -> None:
        """Zero ``conv2`` (the branch's last layer) so the block starts as the identity map."""
        _zero_init_last(None, self.conv2)


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck: BN-ReLU-1x1, BN-ReLU-3x3, BN-ReLU-1x1 (x4), plus the shortcut.

    .. math::

        y = x + W_3 * \\mathrm{ReLU}(\\mathrm{BN}(W_2 * \\mathrm{ReLU}(\\mathrm{BN}(W_1 *
        \\mathrm{ReLU}(\\mathrm{BN}(x))))))

    From "Identity Mappings in Deep Residual Networks" (He et al., 2016). A projection shortcut reads
    ``ReLU(BN(x))``. Submodules: ``bn1, relu1, conv1, bn2, relu2, conv2, bn3, relu3, conv3, downsample``.

    Args:
        inplanes: input channels.
        planes: bottleneck planes; the output has ``4 * planes`` channels.
        stride: 2 halves height and width (in ``conv2`` for ``"v1.5"``, in ``conv1`` for ``"v1"``).
        downsample: shortcut module applied to ``ReLU(BN(x))``; ``None`` for the identity on ``x``.
        variant: ``"v1.5"`` or ``"v1"``, as for :class:`Bottleneck`.
        groups: groups of the 3x3 convolution.
        base_width: width per group; ``width = int(planes * base_width / 64) * groups``.
        norm_layer: ``"torch"``, ``"netvis"``, ``"none"``/``None`` or a callable ``channels -> module``.
        act_layer: a callable building a fresh activation module (default ``nn.ReLU``).

    Shape:
        ``(N, inplanes, H, W) -> (N, 4 * planes, ceil(H/stride), ceil(W/stride))``.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        variant: str = "v1.5",
        groups: int = 1,
        base_width: int = 64,
        norm_layer: str | NormLayer | None = "torch",
        act_layer: ActLayer = nn.ReLU,
    ) -> None:
        super().__init__()
        _check_choice("variant", variant, VARIANTS)
        norm = resolve_norm_layer(norm_layer)
        bias = norm is None
        width = int(planes * (base_width / 64.0)) * groups
        stride1, stride2 = (stride, 1) if variant == "v1" else (1, stride)
        self.bn1 = _make_norm(norm, inplanes)
        self.relu1 = _make_act(act_layer)
        self.conv1 = _conv1x1(inplanes, width, stride1, bias=bias)
        self.bn2 = _make_norm(norm, width)
        self.relu2 = _make_act(act_layer)
        self.conv2 = _conv3x3(width, width, stride2, groups=groups, bias=bias)
        self.bn3 = _make_norm(norm, width)
        self.relu3 = _make_act(act_layer)
        self.conv3 = _conv1x1(width, planes * self.expansion, bias=bias)
        self.downsample = downsample
        self.stride = stride
        self.variant = variant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block: ``conv3(relu3(bn3(conv2(relu2(bn2(conv1(relu1(bn1(x))))))))) + shortcut``."""
        out = self.bn1(x)
        out = self.relu1(out)
        shortcut = x if self.downsample is None else self.downsample(out)
        out = self.conv1(out)
        out = self.bn2(out)
        out = self.relu2(out)
        out = self.conv2(out)
        out = self.bn3(out)
        out = self.relu3(out)
        out = self.conv3(out)
        return out + shortcut

    def zero_init_last(self) -> None:
        """Zero ``conv3`` (the branch's last layer) so the block starts as the identity map."""
        _zero_init_last(None, self.conv3)


_BLOCK_CLASSES: dict[tuple[str, bool], type[nn.Module]] = {
    ("basic", False): BasicBlock,
    ("bottleneck", False): Bottleneck,
    ("basic", True): PreActBasicBlock,
    ("bottleneck", True): PreActBottleneck,
}


# --------------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------------


class ResNet(nn.Module):
    """A residual network: stem, stages of residual blocks, global average pooling and a linear classifier.

    From "Deep Residual Learning for Image Recognition" (He et al., 2015) and, with ``preact=True``,
    "Identity Mappings in Deep Residual Networks" (He et al., 2016). The defaults reproduce
    torchvision's ResNet (v1.5), submodule names included (``conv1, bn1, relu, maxpool, layer1 ...
    layerK, avgpool, fc``), so its state dicts load with ``strict=True``.

    .. math::

        \\mathrm{logits} = W_{fc}\\,\\mathrm{avgpool}\\big(\\mathrm{layer}_K(\\cdots
        \\mathrm{layer}_1(\\mathrm{stem}(x)))\\big) + b_{fc}

    Stage ``i`` has ``layers[i]`` blocks producing ``stage_channels[i] * block.expansion`` channels; every
    stage after the first halves the resolution in its first block.

    Args:
        block: ``"basic"`` (two 3x3 convs) or ``"bottleneck"`` (1x1-3x3-1x1, 4x expansion).
        layers: number of blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        stage_channels: planes of each stage; default ``(64, 128, 256, 512)`` (or the first
            ``len(layers)`` of those). The stem outputs ``stage_channels[0]`` channels.
        stem: ``"imagenet"`` (7x7/2 conv, norm, ReLU, 3x3/2 max-pool) or ``"cifar"`` (3x3/1 conv, norm,
            ReLU, no pooling: for 28x28/32x32 images).
        variant: ``"v1.5"`` (stride in the bottleneck's 3x3 conv) or ``"v1"`` (in its first 1x1 conv).
            Basic blocks are the same in both.
        preact: ``True`` for pre-activation blocks (BN-ReLU-conv) and a final BN-ReLU (``bn_final``,
            ``relu_final``) before pooling.
        shortcut: ``"B"`` (projection: strided 1x1 conv + norm where the shape changes, identity
            elsewhere) or ``"A"`` (parameter-free: subsample and pad zero channels).
        in_channels: channels of the input images (1 for grey-scale).
        num_classes: outputs of the classifier ``fc``.
        norm_layer: ``"torch"`` (``nn.BatchNorm2d``), ``"netvis"`` (netvis's own BatchNorm2d),
            ``"none"``/``None`` (no normalization; convolutions then get biases) or a callable
            ``channels -> module``.
        act_layer: callable building a fresh activation module; default ``nn.ReLU``. In-place
            activations are refused.
        zero_init_residual: zero the last norm scale (the last conv for pre-activation blocks) of every
            residual branch, so each block starts as the identity.
        groups: groups of the bottleneck's 3x3 conv (ResNeXt: ``groups=32, width_per_group=4``).
        width_per_group: bottleneck width per group (Wide ResNet-50-2: ``width_per_group=128``).

    Attributes:
        in_channels (int): input channels the model accepts.
        num_classes (int): classifier outputs.
        num_features (int): channels of :meth:`forward_features`'s output (``fc.in_features``).
        stage_names (tuple[str, ...]): ``("layer1", ..., "layerK")``.
        arch (str): the builder's name (``"resnet50"``, ``"resnet20_cifar"``; ``"resnet"`` for the class).
        config (dict): the constructor's arguments; ``ResNet(**model.config)`` rebuilds the architecture.

    Shape:
        ``(N, in_channels, H, W) -> (N, num_classes)``.

    Raises:
        ValueError: an option has a value outside its allowed set (the message names it and the choices).
    """

    def __init__(
        self,
        block: str,
        layers: Sequence[int],
        *,
        stage_channels: Sequence[int] | None = None,
        stem: str = "imagenet",
        variant: str = "v1.5",
        preact: bool = False,
        shortcut: str = "B",
        in_channels: int = 3,
        num_classes: int = 1000,
        norm_layer: str | NormLayer | None = "torch",
        act_layer: ActLayer = nn.ReLU,
        zero_init_residual: bool = False,
        groups: int = 1,
        width_per_group: int = 64,
    ) -> None:
        super().__init__()
        _check_choice("block", block, BLOCKS)
        _check_choice("stem", stem, STEMS)
        _check_choice("variant", variant, VARIANTS)
        _check_choice("preact", preact, (False, True))
        _check_choice("shortcut", shortcut, SHORTCUTS)
        _check_choice("zero_init_residual", zero_init_residual, (False, True))
        _check_positive_int("in_channels", in_channels)
        _check_positive_int("num_classes", num_classes)
        _check_positive_int("groups", groups)
        _check_positive_int("width_per_group", width_per_group)
        layers, stage_channels = _check_stages(layers, stage_channels)
        if block == "basic" and (groups != 1 or width_per_group != 64):
            raise ValueError("block='basic' supports only groups=1 and width_per_group=64")
        if not callable(act_layer):
            raise ValueError(f"act_layer must be a callable building an nn.Module; got {act_layer!r}")

        norm = resolve_norm_layer(norm_layer)
        block_cls = _BLOCK_CLASSES[(block, preact)]
        self.arch = "resnet"
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.preact = preact

        self.conv1, self.bn1, self.relu, maxpool = _stem_modules(
            stem, in_channels, stage_channels[0], norm, act_layer
        )
        self.maxpool = maxpool  # None for the CIFAR stem

        block_kwargs: dict[str, Any] = {"norm_layer": norm, "act_layer": act_layer}
        if block == "bottleneck":
            block_kwargs.update(variant=variant, groups=groups, base_width=width_per_group)
        inplanes = stage_channels[0]
        names = []
        for i, (planes, n_blocks) in enumerate(zip(stage_channels, layers, strict=True)):
            stride = 1 if i == 0 else 2
            out = planes * block_cls.expansion
            downsample = None
            if stride != 1 or inplanes != out:
                downsample = self._make_shortcut(inplanes, out, stride, shortcut, preact, norm)
            blocks = [block_cls(inplanes, planes, stride, downsample, **block_kwargs)]
            blocks += [block_cls(out, planes, 1, None, **block_kwargs) for _ in range(1, n_blocks)]
            inplanes = out
            name = f"layer{i + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            names.append(name)
        self.stage_names = tuple(names)
        self.num_features = inplanes

        if preact:
            self.bn_final = _make_norm(norm, inplanes)
            self.relu_final = _make_act(act_layer)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, num_classes)

        _init_convs(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, block_cls):
                    m.zero_init_last()

        # the constructor's arguments: ``ResNet(**model.config)`` rebuilds the architecture
        self.config: dict[str, Any] = {
            "block": block,
            "layers": layers,
            "stage_channels": stage_channels,
            "stem": stem,
            "variant": variant,
            "preact": preact,
            "shortcut": shortcut,
            "in_channels": in_channels,
            "num_classes": num_classes,
            "norm_layer": norm_layer,
            "act_layer": act_layer,
            "zero_init_residual": zero_init_residual,
            "groups": groups,
            "width_per_group": width_per_group,
        }

    @staticmethod
    def _make_shortcut(
        inplanes: int, out: int, stride: int, shortcut: str, preact: bool, norm: NormLayer | None
    ) -> nn.Module:
        """The shortcut of a block whose shape changes: option A, or option B (1x1 conv [+ norm])."""
        if shortcut == "A":
            return ZeroPadShortcut(inplanes, out, stride)
        conv = _conv1x1(inplanes, out, stride, bias=norm is None)
        if preact:
            return nn.Sequential(conv)
        return nn.Sequential(conv, _make_norm(norm, out))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and residual stages (and, for ``preact=True``, the final BN-ReLU).

        Args:
            x: images, shape ``(N, in_channels, H, W)``.

        Returns:
            The last feature map, shape ``(N, num_features, H', W')``; ``H' = H/32`` for the ImageNet
            stem with 4 stages, ``H/4`` for the CIFAR stem with 3 stages.

        Raises:
            ValueError: ``x`` is not 4-D or has the wrong number of channels.
        """
        x = _check_input(x, self.in_channels, self.arch)
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        if self.maxpool is not None:
            x = self.maxpool(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        if self.preact:
            x = self.bn_final(x)
            x = self.relu_final(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pooling and the linear classifier.

        Args:
            x: feature map from :meth:`forward_features`, shape ``(N, num_features, H', W')``.
            pre_logits: return the pooled features, shape ``(N, num_features)``, instead of the logits.

        Returns:
            Logits of shape ``(N, num_classes)`` (or pooled features when ``pre_logits``).
        """
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify images: ``forward_head(forward_features(x))``.

        Args:
            x: images, shape ``(N, in_channels, H, W)``.

        Returns:
            Logits, shape ``(N, num_classes)``.
        """
        return self.forward_head(self.forward_features(x))


# --------------------------------------------------------------------------------------------------
# builders
# --------------------------------------------------------------------------------------------------


def _resnet(arch: str, block: str, layers: Sequence[int], **options: Any) -> ResNet:
    """Build a :class:`ResNet` and record the builder's name in ``model.arch``."""
    model = ResNet(block, layers, **options)
    model.arch = arch
    return model


_OPTIONS_DOC = """
    Keyword-only options (all of :class:`ResNet`'s): ``num_classes=1000``, ``in_channels=3``,
    ``stem="imagenet"|"cifar"``, ``variant="v1.5"|"v1"``, ``preact=False``, ``shortcut="B"|"A"``,
    ``norm_layer="torch"|"netvis"|"none"|callable``, ``act_layer=nn.ReLU``, ``zero_init_residual=False``,
    ``groups=1``, ``width_per_group=64``, ``stage_channels``. With the defaults, torchvision's
    state dict of the same depth loads with ``strict=True``.
"""


def resnet18(**options: Any) -> ResNet:
    """ResNet-18 (basic blocks, ``(2, 2, 2, 2)``; 11,689,512 parameters with 1000 classes).

    From "Deep Residual Learning for Image Recognition" (He et al., 2015).

    Args:
        **options: keyword-only options of :class:`ResNet` (see below).

    Returns:
        The model, randomly initialised.
    """
    return _resnet("resnet18", "basic", (2, 2, 2, 2), **options)


def resnet34(**options: Any) -> ResNet:
    """ResNet-34 (basic blocks, ``(3, 4, 6, 3)``; 21,797,672 parameters with 1000 classes).

    From "Deep Residual Learning for Image Recognition" (He et al., 2015).

    Args:
        **options: keyword-only options of :class:`ResNet` (see below).

    Returns:
        The model, randomly initialised.
    """
    return _resnet("resnet34", "basic", (3, 4, 6, 3), **options)


def resnet50(**options: Any) -> ResNet:
    """ResNet-50 (bottleneck blocks, ``(3, 4, 6, 3)``; 25,557,032 parameters with 1000 classes).

    From "Deep Residual Learning for Image Recognition" (He et al., 2015).

    Args:
        **options: keyword-only options of :class:`ResNet` (see below).

    Returns:
        The model, randomly initialised.
    """
    return _resnet("resnet50", "bottleneck", (3, 4, 6, 3), **options)


def resnet101(**options: Any) -> ResNet:
    """ResNet-101 (bottleneck blocks, ``(3, 4, 23, 3)``; 44,549,160 parameters with 1000 classes).

    From "Deep Residual Learning for Image Recognition" (He et al., 2015).

    Args:
        **options: keyword-only options of :class:`ResNet` (see below).

    Returns:
        The model, randomly initialised.
    """
    return _resnet("resnet101", "bottleneck", (3, 4, 23, 3), **options)


def resnet152(**options: Any) -> ResNet:
    """ResNet-152 (bottleneck blocks, ``(3, 8, 36, 3)``; 60,192,808 parameters with 1000 classes).

    From "Deep Residual Learning for Image Recognition" (He et al., 2015).

    Args:
        **options: keyword-only options of :class:`ResNet` (see below).

    Returns:
        The model, randomly initialised.
    """
    return _resnet("resnet152", "bottleneck", (3, 8, 36, 3), **options)


for _builder in (resnet18, resnet34, resnet50, resnet101, resnet152):
    _builder.__doc__ = (_builder.__doc__ or "") + _OPTIONS_DOC
del _builder


def cifar_blocks_per_stage(depth: int) -> int:
    """Blocks per stage ``n`` of a CIFAR-style net of ``depth = 6n + 2`` weighted layers.

    Args:
        depth: total number of weighted layers (stem conv + ``6n`` block convs + ``fc``).

    Returns:
        ``n = (depth - 2) / 6``.

    Raises:
        ValueError: ``depth`` is not of the form ``6n + 2`` with ``n >= 1`` (20, 32, 44, 56, 110, ...).
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...); got {depth!r}")
    return (depth - 2) // 6


# The CIFAR nets' defaults (He et al. 2015, section 4.2), shared with the plain twins; options override them.
_CIFAR_DEFAULTS: dict[str, Any] = {"num_classes": 10, "stem": "cifar", "stage_channels": (16, 32, 64)}


def resnet_cifar(depth: int, **options: Any) -> ResNet:
    """CIFAR-10 ResNet with ``depth = 6n + 2`` layers (He et al. 2015, section 4.2).

    A 3x3 stem conv with 16 filters, three stages of ``n`` basic blocks with 16, 32 and 64 channels on
    32x32, 16x16 and 8x8 maps, global average pooling and a 10-way ``fc``. From "Deep Residual Learning
    for Image Recognition" (He et al., 2015); with ``preact=True`` the pre-activation version of
    "Identity Mappings in Deep Residual Networks" (He et al., 2016).

    The paper's CIFAR nets use the parameter-free shortcut (option A: ResNet-20 has 0.27M parameters);
    netvis defaults to the projection shortcut (option B: a strided 1x1 conv + norm at the two stage
    transitions, 2,752 more parameters for 16/32/64 channels).

    Args:
        depth: ``6n + 2``: 20, 32, 44, 56, 110, ...
        **options: keyword-only options of :class:`ResNet`; here the defaults are ``num_classes=10``,
            ``stem="cifar"``, ``stage_channels=(16, 32, 64)``, ``shortcut="B"``, ``in_channels=3``; also
            ``preact``, ``norm_layer``, ``act_layer``, ``zero_init_residual``.

    Returns:
        The model, randomly initialised: ``(N, in_channels, 32, 32) -> (N, num_classes)``.

    Raises:
        ValueError: ``depth`` is not ``6n + 2``, or an option value is invalid.
    """
    n = cifar_blocks_per_stage(depth)
    return _resnet(f"resnet{depth}_cifar", "basic", (n, n, n), **{**_CIFAR_DEFAULTS, **options})


def resnet20_cifar(**options: Any) -> ResNet:
    """CIFAR ResNet-20 (``n = 3``); see :func:`resnet_cifar` for the options.

    Args:
        **options: keyword-only options of :func:`resnet_cifar`.

    Returns:
        The model (272,474 parameters with shortcut B, 269,722 with shortcut A).
    """
    return resnet_cifar(20, **options)


def resnet32_cifar(**options: Any) -> ResNet:
    """CIFAR ResNet-32 (``n = 5``); see :func:`resnet_cifar` for the options.

    Args:
        **options: keyword-only options of :func:`resnet_cifar`.

    Returns:
        The model, randomly initialised.
    """
    return resnet_cifar(32, **options)


def resnet44_cifar(**options: Any) -> ResNet:
    """CIFAR ResNet-44 (``n = 7``); see :func:`resnet_cifar` for the options.

    Args:
        **options: keyword-only options of :func:`resnet_cifar`.

    Returns:
        The model, randomly initialised.
    """
    return resnet_cifar(44, **options)


def resnet56_cifar(**options: Any) -> ResNet:
    """CIFAR ResNet-56 (``n = 9``); see :func:`resnet_cifar` for the options.

    Args:
        **options: keyword-only options of :func:`resnet_cifar`.

    Returns:
        The model, randomly initialised.
    """
    return resnet_cifar(56, **options)


def resnet110_cifar(**options: Any) -> ResNet:
    """CIFAR ResNet-110 (``n = 18``); see :func:`resnet_cifar` for the options.

    Args:
        **options: keyword-only options of :func:`resnet_cifar`.

    Returns:
        The model, randomly initialised.
    """
    return resnet_cifar(110, **options)
