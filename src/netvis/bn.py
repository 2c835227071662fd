"""Batch normalization tools: exact recalibration, BN-only training, statistics for the report.

Three things the lecture does with a trained network's batch normalization layers:

* :func:`recalibrate` -- the *other* strategy for the statistics used at test time. During training
  every BN layer keeps exponential running averages of its batch statistics (PyTorch's default,
  ``momentum=0.1``); they lag behind the weights and mix statistics of many different weight states.
  After training, fix the weights and recompute each BN layer's mean and variance over the whole
  training set, layer by layer, first layers first, so that each layer's statistics are those of its
  input with the earlier layers already recalibrated.
* :func:`set_trainable` -- train only the BN parameters :math:`\\gamma, \\beta` (or everything but
  them), as in "Training BatchNorm and Only BatchNorm: On the Expressive Power of Random Features in
  CNNs" (Frankle, Schwab and Morcos, ICLR 2021; arXiv 2020).
* :func:`bn_statistics` -- every BN layer's running statistics and affine parameters, for the report.

A *BN layer* here is ``torch.nn.BatchNorm1d/2d/3d``, ``torch.nn.SyncBatchNorm``, netvis's own
:class:`netvis.models.batchnorm.BatchNorm2d`, or any module that looks like one: it has tensor
``running_mean`` and ``running_var`` attributes and a ``momentum`` attribute (see :func:`is_batchnorm`).

Reference: S. Ioffe and C. Szegedy, "Batch Normalization: Accelerating Deep Network Training by
Reducing Internal Covariate Shift", ICML 2015.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from netvis._checks import check_positive_int
from netvis._compat import BatchNormBase
from netvis.devices import device_for
from netvis.hooks import StopForward, call_order

__all__ = [
    "TRAINABLE_POLICIES",
    "TrainableState",
    "bn_layers",
    "bn_statistics",
    "is_batchnorm",
    "output_layer",
    "recalibrate",
    "set_trainable",
]

TRAINABLE_POLICIES = ("all", "bn", "bn+fc", "all-but-bn")
"""The policies :func:`set_trainable` accepts."""

_MISSING = object()


# --------------------------------------------------------------------------------------------------
# finding BN layers
# --------------------------------------------------------------------------------------------------


def is_batchnorm(module: nn.Module) -> bool:
    """Whether ``module`` is a batch normalization layer.

    True for every subclass of ``torch.nn.modules.batchnorm._BatchNorm`` (``BatchNorm1d/2d/3d``,
    ``SyncBatchNorm``) and, by duck typing, for any module with a ``momentum`` attribute and
    ``running_mean``/``running_var`` attributes that are tensors or ``None`` (netvis's own BN layers,
    third-party re-implementations). Layers built with ``track_running_stats=False`` count as BN layers
    too; :func:`recalibrate` skips them since they have no statistics to set.

    Args:
        module: any module.

    Returns:
        ``True`` if the module is a BN layer.
    """
    if isinstance(module, BatchNormBase):
        return True
    if not hasattr(module, "momentum"):
        return False
    mean = getattr(module, "running_mean", _MISSING)
    var = getattr(module, "running_var", _MISSING)
    if mean is _MISSING or var is _MISSING:
        return False
    if not all(v is None or isinstance(v, Tensor) for v in (mean, var)):
        return False
    return isinstance(mean, Tensor) or hasattr(module, "track_running_stats")


def bn_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every BN layer of ``model`` with its dotted name, in registration order.

    Args:
        model: any module.

    Returns:
        ``[(name, module), ...]``; ``name`` is the dotted path ``model.get_submodule`` accepts.
    """
    return [(name, m) for name, m in model.named_modules() if is_batchnorm(m)]


def _has_stats(module: nn.Module) -> bool:
    return isinstance(getattr(module, "running_mean", None), Tensor) and isinstance(
        getattr(module, "running_var", None), Tensor
    )


# --------------------------------------------------------------------------------------------------
# recalibration
# --------------------------------------------------------------------------------------------------


class _Moments:
    """Per-channel count, mean and sum of squared deviations, merged batch by batch in float64.

    Batches are combined with the parallel formula of Chan, Golub and LeVeque ("Updating formulae and
    a pairwise algorithm for computing sample variances", 1979), which stays accurate where
    ``sum(x^2) - n * mean^2`` would cancel.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def add(self, x: Tensor) -> None:
        """Add a batch ``(B, C, *)``: statistics per channel over every other dimension."""
        if x.dim() < 2:
            raise ValueError(f"a BN layer's input must have a channel dimension; got shape {tuple(x.shape)}")
        x = x.detach().to(torch.float64)
        channels = x.shape[1]
        flat = x.transpose(0, 1).reshape(channels, -1)
        n = flat.shape[1]
        if n == 0:
            return
        mean = flat.mean(dim=1)
        m2 = (flat - mean[:, None]).square().sum(dim=1)
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta.square() * (self.count * n / total)
        self.count = total

    def result(self) -> tuple[Tensor, Tensor]:
        """``(mean, unbiased variance)`` in float64."""
        if self.mean is None or self.count < 2:
            raise ValueError(f"need at least 2 values per channel to estimate a variance, got {self.count}")
        return self.mean, self.m2 / (self.count - 1)


def _as_loader(data: DataLoader | Dataset | Iterable, batch_size: int) -> Iterable:
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, Dataset) or (
        not isinstance(data, (list, tuple)) and hasattr(data, "__getitem__") and hasattr(data, "__len__")
    ):
        return DataLoader(data, batch_size=batch_size, shuffle=False)
    if isinstance(data, Iterable):
        return data
    raise TypeError(
        f"data must be a DataLoader, a Dataset or an iterable of batches; got {type(data).__name__}"
    )


def _inputs_of(batch: Any) -> Tensor:
    """The model input of a batch: the batch itself, or the first element of an ``(inputs, targets)`` pair."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    if isinstance(batch, dict) and isinstance(batch.get("image"), Tensor):
        return batch["image"]
    raise TypeError(
        "each batch must be a tensor or a (inputs, targets) pair whose first element is a tensor; "
        f"got {type(batch).__name__}"
    )


@contextlib.contextmanager
def _modes(model: nn.Module, training: bool) -> Iterator[None]:
    """Put every submodule in train or eval mode, then restore each one's own flag."""
    before = [(m, m.training) for m in model.modules()]
    try:
        model.train(training)
        yield
    finally:
        for m, flag in before:
            m.training = flag


def _forward_order(
    model: nn.Module, layers: list[tuple[str, nn.Module]], x: Tensor
) -> list[tuple[str, nn.Module]]:
    """The BN layers in the order the forward pass first calls them (unused layers at the end)."""
    called = call_order(model, [module for _, module in layers], x)
    return [layers[i] for i in called] + [layer for i, layer in enumerate(layers) if i not in called]


def recalibrate(
    model: nn.Module,
    data: DataLoader | Dataset | Iterable,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> nn.Module:
    """Recompute every BN layer's statistics exactly over ``data``, layer by layer, first layers first.

    With all weights fixed, the first BN layer (in forward order) gets as ``running_mean`` and
    ``running_var`` the exact mean and unbiased variance of its input over every value of every image
    in ``data``, per channel (over the batch and spatial dimensions); then the second BN layer, whose
    input is now computed with the first layer already using its new statistics; and so on:

    .. math::
        \\hat\\mu_c^{(l)} = \\frac{1}{n}\\sum_{i} x^{(l)}_{ic}, \\qquad
        \\hat\\sigma_c^{2\\,(l)} = \\frac{1}{n-1}\\sum_{i} \\big(x^{(l)}_{ic} - \\hat\\mu_c^{(l)}\\big)^2,

    where :math:`x^{(l)}` is layer :math:`l`'s input with layers :math:`1..l-1` in eval mode using
    their recalibrated statistics, and :math:`i` runs over all :math:`n` values of channel :math:`c`
    in the data set. This replaces the exponential running averages of training ("momentum"), which
    mix statistics of many weight states, by the statistics of the final weights. The sums are
    accumulated in float64; the result is stored in the buffers' own dtype.

    One pass over ``data`` per BN layer; each pass stops right after the layer being recalibrated, so
    the cost is about half a forward pass over the data per layer.

    Everything but the BN statistics is left as it was: train/eval mode of every submodule,
    ``requires_grad``, gradients, hooks (only temporary hooks are added and always removed), and
    ``num_batches_tracked``. If anything fails midway (a bad batch, an interrupt), every BN layer's
    buffers, momentum and mode are restored bit for bit before the error propagates. Layers built
    with ``track_running_stats=False`` have no statistics and are
    skipped.

    Args:
        model: the network; its BN layers' ``running_mean`` and ``running_var`` are overwritten in place.
        data: a ``DataLoader``, a ``Dataset`` (batched here, in order, with ``batch_size``) or any
            other iterable of batches: a list of tensors, a generator; a batch is an input tensor
            ``(B, C, H, W)`` or a tuple whose first element is one (``(images, labels)``). Every layer
            needs one pass over the data: a re-iterable source is iterated once per layer, a one-shot
            iterator (a generator) is read once and its batches kept in memory for the other passes.
            Use the normalised training images without random augmentation.
        batch_size: batch size when ``data`` is a ``Dataset``. Results do not depend on it.
        device: where to run the forward passes; default the model's device. The model must already
            be there (it is not moved).
        progress: show a tqdm progress bar over the layers.

    Returns:
        ``model`` itself, for chaining.

    Raises:
        ValueError: ``model`` has no BN layer with running statistics, ``data`` is empty, or a layer
            sees fewer than two values per channel.
        TypeError: ``data`` or its batches have an unsupported type.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3),
        ...                     nn.BatchNorm2d(2)).eval()
        >>> images = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        >>> _ = recalibrate(net, torch.utils.data.TensorDataset(images), batch_size=10)
        >>> inputs = net[0](images)
        >>> torch.allclose(net[1].running_mean, inputs.mean(dim=(0, 2, 3)), atol=1e-5)
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_positive_int(batch_size, "batch_size")
    layers = [(name, m) for name, m in bn_layers(model) if _has_stats(m)]
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no batch normalization layer with running statistics to recalibrate"
        )
    device = device_for(model, device)
    source = _Batches(_as_loader(data, batch_size))
    saved = _save_bn_state([layer for _, layer in layers])
    try:
        with _modes(model, training=False), torch.no_grad():
            first = next(source.once(device), None)
            if first is None:
                raise ValueError("data is empty: there is nothing to compute statistics over")
            layers = _forward_order(model, layers, first)
            _recalibrate_in_order(model, layers, source, device, progress)
    except BaseException:
        _restore_bn_state(saved)
        raise
    return model


class _Batches:
    """The batches of ``data``, readable once per BN layer.

    A re-iterable source (a list, a ``DataLoader``, a ``Dataset`` batched here) is iterated again for
    each pass. A one-shot iterator (a generator, ``iter(...)``) is read once, and its batches are kept
    (as given, on their own device) for the later passes.
    """

    def __init__(self, loader: Iterable) -> None:
        self._loader = loader
        self._one_shot = isinstance(loader, Iterator)  # generators, iter(...): readable once
        self._kept: list[Any] | None = None

    def once(self, device: torch.device) -> Iterator[Tensor]:
        """One pass: every batch's input tensor on ``device``."""
        if self._one_shot:
            if self._kept is None:
                self._kept = list(self._loader)
            batches: Iterable = self._kept
        else:
            batches = self._loader
        for batch in batches:
            yield _inputs_of(batch).to(device)


def _save_bn_state(layers: list[nn.Module]) -> list[tuple[nn.Module, dict[str, Tensor], Any, bool]]:
    """Copies of every buffer (running statistics, ``num_batches_tracked``), the momentum and the mode."""
    return [
        (layer, {name: buf.detach().clone() for name, buf in layer.named_buffers(recurse=False)},
         getattr(layer, "momentum", None), layer.training)
        for layer in layers
    ]


def _restore_bn_state(saved: list[tuple[nn.Module, dict[str, Tensor], Any, bool]]) -> None:
    with torch.no_grad():
        for layer, buffers, momentum, training in saved:
            for name, value in buffers.items():
                getattr(layer, name).copy_(value)
            if hasattr(layer, "momentum"):
                layer.momentum = momentum
            layer.training = training


def _recalibrate_in_order(
    model: nn.Module, layers: list[tuple[str, nn.Module]], source: _Batches, device: torch.device,
    progress: bool,
) -> None:
    """Each layer in turn: its input's exact statistics over one pass of ``source``, then stored."""
    progress_bar = tqdm(total=len(layers), desc="recalibrating BN", unit="layer") if progress else None
    try:
        for name, layer in layers:
            moments = _Moments()

            def hook(_module, args, moments=moments):
                moments.add(args[0])
                raise StopForward

            handle = layer.register_forward_pre_hook(hook)
            try:
                for x in source.once(device):
                    try:
                        model(x)
                    except StopForward:
                        pass
            finally:
                handle.remove()
            if moments.count == 0:
                # The forward pass never reached this layer: leave its statistics alone.
                continue
            try:
                mean, var = moments.result()
            except ValueError as exc:
                raise ValueError(f"cannot recalibrate BN layer {name!r}: {exc}") from exc
            layer.running_mean.copy_(mean.to(layer.running_mean.dtype))
            layer.running_var.copy_(var.to(layer.running_var.dtype))
            if progress_bar is not None:
                progress_bar.update(1)
    finally:
        if progress_bar is not None:
            progress_bar.close()


# --------------------------------------------------------------------------------------------------
# BN-only training
# --------------------------------------------------------------------------------------------------


def output_layer(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The model's output layer: its last registered ``nn.Linear`` (``fc`` of a ResNet, ``classifier``
    of a DenseNet), or ``None`` if it has none.

    Args:
        model: any module.

    Returns:
        ``(dotted name, module)`` or ``None``.
    """
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = (name, module)
    return found


class TrainableState:
    """What :func:`set_trainable` changed; restores every ``requires_grad`` flag on :meth:`restore`.

    Use it as a context manager to make the change temporary::

        with set_trainable(model, "bn"):
            ...  # only gamma and beta have requires_grad=True here
        # the previous flags are back

    Attributes:
        policy (str): the policy applied.
        trainable (list[str]): names of the parameters left trainable.
        frozen (list[str]): names of the parameters frozen.
    """

    def __init__(
        self, policy: str, previous: list[tuple[nn.Parameter, bool]], trainable: list[str], frozen: list[str]
    ) -> None:
        self.policy = policy
        self.trainable = trainable
        self.frozen = frozen
        self._previous = previous

    def restore(self) -> None:
        """Put every parameter's ``requires_grad`` back as it was before :func:`set_trainable`."""
        for param, flag in self._previous:
            param.requires_grad_(flag)

    def __enter__(self) -> TrainableState:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.restore()

    def __repr__(self) -> str:
        return (
            f"TrainableState(policy={self.policy!r}, trainable={len(self.trainable)} tensors, "
            f"frozen={len(self.frozen)} tensors)"
        )


def set_trainable(model: nn.Module, policy: str = "all") -> TrainableState:
    """Choose which parameters train: all, only the BN parameters, or all but the BN parameters.

    Policies (a parameter is trainable when its ``requires_grad`` is ``True``):

    * ``"all"``: every parameter.
    * ``"bn"``: only the BN layers' :math:`\\gamma` (``weight``) and :math:`\\beta` (``bias``); every
      convolution **and the output layer** stay at their random initialisation. This is the setting
      of Frankle et al., "Training BatchNorm and Only BatchNorm" (the output layer is frozen there too,
      so the random features are combined by a random linear classifier; only the per-channel scale
      and shift are learned).
    * ``"bn+fc"``: the BN parameters and the output layer (:func:`output_layer`, the last
      ``nn.Linear``), the paper's comparison with training the output layer as well.
    * ``"all-but-bn"``: every parameter except the BN parameters, which stay at
      :math:`\\gamma = 1, \\beta = 0` (the paper's ablation).

    The BN running statistics are buffers, not parameters: they keep updating in training mode under
    every policy.

    The change takes effect immediately. The returned :class:`TrainableState` restores the previous
    flags, on :meth:`TrainableState.restore` or at the end of a ``with`` block.

    Args:
        model: the network.
        policy: one of :data:`TRAINABLE_POLICIES`.

    Returns:
        A :class:`TrainableState` listing the trainable and frozen parameters.

    Raises:
        ValueError: unknown policy, or a BN policy on a model without BN parameters (nothing would
            train), or ``"bn+fc"`` on a model without an ``nn.Linear``.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
        >>> with set_trainable(net, "bn") as state:
        ...     state.trainable
        ['1.weight', '1.bias']
        >>> all(p.requires_grad for p in net.parameters())
        True
    """
    if policy not in TRAINABLE_POLICIES:
        raise ValueError(
            f"unknown trainable policy {policy!r}; choose one of {', '.join(TRAINABLE_POLICIES)}"
        )
    bn_params: set[int] = set()
    for _, module in bn_layers(model):
        for param in module.parameters(recurse=False):
            bn_params.add(id(param))
    head_params: set[int] = set()
    if policy == "bn+fc":
        head = output_layer(model)
        if head is None:
            raise ValueError(
                f"policy 'bn+fc' needs an output nn.Linear layer; {type(model).__name__} has none"
            )
        head_params = {id(p) for p in head[1].parameters()}
    if policy in ("bn", "bn+fc") and not bn_params:
        raise ValueError(
            f"policy {policy!r} trains the batch normalization parameters, but {type(model).__name__} has no "
            "BN layer with affine parameters"
        )

    previous: list[tuple[nn.Parameter, bool]] = []
    flags: list[bool] = []
    trainable, frozen = [], []
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        is_bn = id(param) in bn_params
        if policy == "all":
            flag = True
        elif policy == "bn":
            flag = is_bn
        elif policy == "bn+fc":
            flag = is_bn or id(param) in head_params
        else:  # all-but-bn
            flag = not is_bn
        previous.append((param, param.requires_grad))
        flags.append(flag)
        (trainable if flag else frozen).append(name)
    for (param, _), flag in zip(previous, flags, strict=True):
        param.requires_grad_(flag)
    return TrainableState(policy, previous, trainable, frozen)


# --------------------------------------------------------------------------------------------------
# inspection
# --------------------------------------------------------------------------------------------------


def _copy(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().to("cpu", copy=True)


def bn_statistics(model: nn.Module) -> list[dict[str, Any]]:
    """Every BN layer's running statistics and affine parameters, in registration order.

    Args:
        model: any module.

    Returns:
        One dict per BN layer with keys ``name`` (dotted path), ``type`` (class name),
        ``num_features``, ``running_mean`` and ``running_var`` (``(C,)`` tensors, or ``None`` without
        running statistics), ``weight`` (:math:`\\gamma`) and ``bias`` (:math:`\\beta`) (``(C,)``
        tensors or ``None`` when not affine), ``eps``, ``momentum`` and ``num_batches_tracked`` (int or
        ``None``). Tensors are detached CPU copies: changing them does not change the model.

    Example:
        >>> from torch import nn
        >>> stats = bn_statistics(nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3)))
        >>> stats[0]["name"], stats[0]["running_var"].tolist()
        ('1', [1.0, 1.0, 1.0])
    """
    rows = []
    for name, module in bn_layers(model):
        mean = getattr(module, "running_mean", None)
        tracked = getattr(module, "num_batches_tracked", None)
        weight = getattr(module, "weight", None)
        num_features = getattr(module, "num_features", None)
        if num_features is None:
            num_features = (
                mean.numel()
                if isinstance(mean, Tensor)
                else (weight.numel() if isinstance(weight, Tensor) else None)
            )
        rows.append(
            {
                "name": name,
                "type": type(module).__name__,
                "num_features": num_features,
                "running_mean": _copy(mean),
                "running_var": _copy(getattr(module, "running_var", None)),
                "weight": _copy(weight),
                "bias": _copy(getattr(module, "bias", None)),
                "eps": getattr(module, "eps", None),
                "momentum": getattr(module, "momentum", None),
                "num_batches_tracked": int(tracked) if isinstance(tracked, Tensor) else None,
            }
        )
    return rows
