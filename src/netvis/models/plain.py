"""Plain networks: the residual networks of :mod:`netvis.models.resnet` with every shortcut removed.

He et al. trained these "plain" twins next to their ResNets to show the *degradation problem*: a deeper
plain net (e.g. 56 layers) reaches a *higher training error* than a shallower one (20 layers), which is not
overfitting but an optimisation difficulty that the identity shortcuts remove. A plain block is

.. math::

    y = \\mathrm{ReLU}\\big(\\mathrm{BN}(W_2 * \\mathrm{ReLU}(\\mathrm{BN}(W_1 * x)))\\big),

the residual :class:`~netvis.models.resnet.BasicBlock` without the ``+ x``. Each plain net has exactly the
layers of its residual twin (same names, same shapes) except the projection shortcuts, so a residual
twin's state dict without its ``downsample`` entries loads into it with ``strict=True``.

Paper:
    "Deep Residual Learning for Image Recognition", He, Zhang, Ren and Sun, 2015 (sections 4.1 and 4.2,
    figures 1, 4 and 6).

Example:
    >>> import torch
    >>> from netvis.models.plain import plain20_cifar
    >>> plain20_cifar()(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.fx
from torch import nn

from ._common import NormLayer, resolve_norm_layer
from ._common import check_input as _check_input
from ._common import make_norm as _make_norm
from .resnet import (
    _CIFAR_DEFAULTS,
    STEMS,
    ActLayer,
    _check_choice,
    _check_positive_int,
    _check_stages,
    _conv3x3,
    _init_convs,
    _make_act,
    _stem_modules,
    cifar_blocks_per_stage,
)

torch.fx.wrap("_check_input")

__all__ = [
    "PlainBlock",
    "PlainNet",
    "plain18",
    "plain34",
    "plain_cifar",
    "plain20_cifar",
    "plain32_cifar",
    "plain44_cifar",
    "plain56_cifar",
]


# --------------------------------------------------------------------------------------------------
# blocks
# --------------------------------------------------------------------------------------------------


class PlainBlock(nn.Module):
    """conv-BN-ReLU-conv-BN-ReLU with nothing added: a residual basic block minus its shortcut.

    .. math::

        y = \\mathrm{ReLU}\\big(\\mathrm{BN}(W_2 * \\mathrm{ReLU}(\\mathrm{BN}(W_1 * x)))\\big)

    From "Deep Residual Learning for Image Recognition" (He et al., 2015), the plain baselines.
    Submodules: ``conv1, bn1, relu1, conv2, bn2, relu2``.

    Args:
        inplanes: input channels.
        planes: output channels.
        stride: stride of ``conv1``; 2 halves height and width.
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
        self.relu2 = _make_act(act_layer)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block: ``relu2(bn2(conv2(relu1(bn1(conv1(x))))))``."""
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu1(out)
        out = self.conv2(out)
        out = self.bn2(out)
        return self.relu2(out)


# --------------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------------


class PlainNet(nn.Module):
    """A plain (shortcut-free) network: stem, stages of :class:`PlainBlock`, pooling, a linear classifier.

    The twin of :class:`~netvis.models.resnet.ResNet` with ``block="basic"``: same submodule names
    (``conv1, bn1, relu, maxpool, layer1 ... layerK, avgpool, fc``) and shapes, no shortcuts. From
    "Deep Residual Learning for Image Recognition" (He et al., 2015).

    Args:
        layers: number of blocks per stage, e.g. ``(3, 3, 3)`` for the 20-layer CIFAR net.
        stage_channels: channels of each stage; default ``(64, 128, 256, 512)`` (or the first
            ``len(layers)`` of those). The stem outputs ``stage_channels[0]`` channels.
        stem: ``"imagenet"`` (7x7/2 conv, norm, ReLU, 3x3/2 max-pool) or ``"cifar"`` (3x3/1 conv, norm, ReLU).
        in_channels: channels of the input images.
        num_classes: outputs of the classifier ``fc``.
        norm_layer: ``"torch"``, ``"netvis"``, ``"none"``/``None`` or a callable ``channels -> module``.
        act_layer: callable building a fresh activation module; default ``nn.ReLU``.

    Attributes:
        in_channels (int): input channels the model accepts.
        num_classes (int): classifier outputs.
        num_features (int): channels of :meth:`forward_features`'s output.
        stage_names (tuple[str, ...]): ``("layer1", ..., "layerK")``.
        arch (str): the builder's name (``"plain20_cifar"``, ``"plain18"``; ``"plain"`` for the class).
        config (dict): the constructor's arguments; ``PlainNet(**model.config)`` rebuilds the architecture.

    Shape:
        ``(N, in_channels, H, W) -> (N, num_classes)``.

    Raises:
        ValueError: an option has a value outside its allowed set.
    """

    def __init__(
        self,
        layers: Sequence[int],
        *,
        stage_channels: Sequence[int] | None = None,
        stem: str = "imagenet",
        in_channels: int = 3,
        num_classes: int = 1000,
        norm_layer: str | NormLayer | None = "torch",
        act_layer: ActLayer = nn.ReLU,
    ) -> None:
        super().__init__()
        _check_choice("stem", stem, STEMS)
        _check_positive_int("in_channels", in_channels)
        _check_positive_int("num_classes", num_classes)
        layers, stage_channels = _check_stages(layers, stage_channels)
        if not callable(act_layer):
            raise ValueError(f"act_layer must be a callable building an nn.Module; got {act_layer!r}")

        norm = resolve_norm_layer(norm_layer)
        self.arch = "plain"
        self.in_channels = in_channels
        self.num_classes = num_classes

        self.conv1, self.bn1, self.relu, maxpool = _stem_modules(
            stem, in_channels, stage_channels[0], norm, act_layer
        )
        self.maxpool = maxpool

        inplanes = stage_channels[0]
        names = []
        for i, (planes, n_blocks) in enumerate(zip(stage_channels, layers, strict=True)):
            stride = 1 if i == 0 else 2
            blocks = [
                PlainBlock(inplanes if j == 0 else planes, planes, stride if j == 0 else 1,
                           norm_layer=norm, act_layer=act_layer)
                for j in range(n_blocks)
            ]
            inplanes = planes
            name = f"layer{i + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            names.append(name)
        self.stage_names = tuple(names)
        self.num_features = inplanes

        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, num_classes)
        _init_convs(self)

        # the constructor's arguments: ``PlainNet(**model.config)`` rebuilds the architecture
        self.config: dict[str, Any] = {
            "layers": layers,
            "stage_channels": stage_channels,
            "stem": stem,
            "in_channels": in_channels,
            "num_classes": num_classes,
            "norm_layer": norm_layer,
            "act_layer": act_layer,
        }

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and plain stages.

        Args:
            x: images, shape ``(N, in_channels, H, W)``.

        Returns:
            The last feature map, shape ``(N, num_features, H', W')``.

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
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pooling and the linear classifier.

        Args:
            x: feature map, shape ``(N, num_features, H', W')``.
            pre_logits: return the pooled features ``(N, num_features)`` instead of the logits.

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


def _plain(arch: str, layers: Sequence[int], **options: Any) -> PlainNet:
    """Build a :class:`PlainNet` and record the builder's name in ``model.arch``."""
    model = PlainNet(layers, **options)
    model.arch = arch
    return model


def plain18(**options: Any) -> PlainNet:
    """Plain-18: ResNet-18's layers without shortcuts (``(2, 2, 2, 2)`` plain blocks).

    From "Deep Residual Learning for Image Recognition" (He et al., 2015), table 2's plain-18.

    Args:
        **options: keyword-only options of :class:`PlainNet`: ``num_classes=1000``, ``in_channels=3``,
            ``stem="imagenet"|"cifar"``, ``norm_layer``, ``act_layer``, ``stage_channels``.

    Returns:
        The model; its parameter count is ResNet-18's minus the three projection shortcuts' (11,515,688).
    """
    return _plain("plain18", (2, 2, 2, 2), **options)


def plain34(**options: Any) -> PlainNet:
    """Plain-34: ResNet-34's layers without shortcuts (``(3, 4, 6, 3)`` plain blocks).

    From "Deep Residual Learning for Image Recognition" (He et al., 2015), figure 3's middle net.

    Args:
        **options: keyword-only options of :class:`PlainNet` (as for :func:`plain18`).

    Returns:
        The model; its parameter count is ResNet-34's minus the three projection shortcuts' (21,623,848).
    """
    return _plain("plain34", (3, 4, 6, 3), **options)


def plain_cifar(depth: int, **options: Any) -> PlainNet:
    """CIFAR-10 plain net with ``depth = 6n + 2`` layers (He et al. 2015, section 4.2).

    The twin of :func:`netvis.models.resnet.resnet_cifar`: a 3x3 stem conv with 16 filters, three stages
    of ``n`` plain blocks with 16, 32 and 64 channels, global average pooling and a 10-way ``fc``. He et al.
    report that the 56-layer plain net trains *worse* than the 20-layer one (the degradation problem).

    Args:
        depth: ``6n + 2``: 20, 32, 44, 56, ...
        **options: keyword-only options of :class:`PlainNet`; here the defaults are ``num_classes=10``,
            ``stem="cifar"``, ``stage_channels=(16, 32, 64)``, ``in_channels=3``; also ``norm_layer``,
            ``act_layer``.

    Returns:
        The model, randomly initialised: ``(N, in_channels, 32, 32) -> (N, num_classes)``.

    Raises:
        ValueError: ``depth`` is not ``6n + 2``, or an option value is invalid.
    """
    n = cifar_blocks_per_stage(depth)
    return _plain(f"plain{depth}_cifar", (n, n, n), **{**_CIFAR_DEFAULTS, **options})


def plain20_cifar(**options: Any) -> PlainNet:
    """CIFAR plain-20 (``n = 3``; 269,722 parameters, as ResNet-20 with shortcut A); see :func:`plain_cifar`.

    Args:
        **options: keyword-only options of :func:`plain_cifar`.

    Returns:
        The model, randomly initialised.
    """
    return plain_cifar(20, **options)


def plain32_cifar(**options: Any) -> PlainNet:
    """CIFAR plain-32 (``n = 5``); see :func:`plain_cifar`.

    Args:
        **options: keyword-only options of :func:`plain_cifar`.

    Returns:
        The model, randomly initialised.
    """
    return plain_cifar(32, **options)


def plain44_cifar(**options: Any) -> PlainNet:
    """CIFAR plain-44 (``n = 7``); see :func:`plain_cifar`.

    Args:
        **options: keyword-only options of :func:`plain_cifar`.

    Returns:
        The model, randomly initialised.
    """
    return plain_cifar(44, **options)


def plain56_cifar(**options: Any) -> PlainNet:
    """CIFAR plain-56 (``n = 9``); see :func:`plain_cifar`.

    Args:
        **options: keyword-only options of :func:`plain_cifar`.

    Returns:
        The model, randomly initialised.
    """
    return plain_cifar(56, **options)
