"""Batch normalization written from the lecture's equations.

netvis's :class:`BatchNorm1d` and :class:`BatchNorm2d` compute the batch statistics with plain mean
reductions instead of calling ``torch.nn.functional.batch_norm``, so that every step of the method is
visible in the code. They are drop-in replacements for ``torch.nn.BatchNorm1d`` / ``torch.nn.BatchNorm2d``:
same constructor, same parameters and buffers (names, shapes, dtypes), same train/eval behaviour and
running-average update, so ``load_state_dict(strict=True)`` works in both directions.

Reference: S. Ioffe and C. Szegedy, "Batch Normalization: Accelerating Deep Network Training by
Reducing Internal Covariate Shift", ICML 2015.

Every shape check and the running-statistics update live in small module-level helpers registered with
``torch.fx.wrap``, so ``torch.fx.symbolic_trace`` can trace a model that uses these layers: the forward
pass branches only on ``self.training`` and on which buffers exist, never on tensor values.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["BatchNorm1d", "BatchNorm2d"]


def _check_input(
    x: Tensor, layer_name: str, ranks: tuple[int, ...], shapes: str, num_features: int
) -> Tensor:
    """Return ``x`` unchanged, or raise a clear error if it is not a valid input for the layer.

    Args:
        x: the layer's input.
        layer_name: the class name used in messages, e.g. ``"BatchNorm2d"``.
        ranks: the accepted numbers of dimensions, e.g. ``(2, 3)``.
        shapes: the accepted shapes in words, e.g. ``"(B, N) or (B, N, L)"``.
        num_features: the number of features/channels the layer was built for (size of dim 1).

    Returns:
        ``x`` itself.

    Raises:
        TypeError: if ``x`` is not a tensor.
        ValueError: if ``x`` has the wrong number of dimensions or the wrong size along dim 1.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{layer_name} expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in ranks:
        expected = " or ".join(f"{r}-D" for r in ranks)
        raise ValueError(
            f"{layer_name} expects a {expected} input shaped {shapes}; got a {x.dim()}-D input of shape "
            f"{tuple(x.shape)}"
        )
    if x.shape[1] != num_features:
        raise ValueError(
            f"{layer_name} was built with num_features={num_features} but the input has {x.shape[1]} "
            f"features/channels along dim 1 (shape {tuple(x.shape)})"
        )
    return x


def _check_values_per_channel(x: Tensor) -> Tensor:
    """Return ``x``, or raise ``ValueError`` if each channel holds a single value (no batch statistics).

    Args:
        x: input of shape ``(B, C, *)``.

    Returns:
        ``x`` itself.
    """
    per_channel = x.shape[0]
    for size in x.shape[2:]:
        per_channel *= size
    if per_channel == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {x.size()}: the batch "
            "variance of a single value is undefined; use a larger batch or call .eval()"
        )
    return x


def _reduction_dims(x: Tensor) -> list[int]:
    """The dimensions that the statistics average over: all but the channel dimension 1.

    Args:
        x: input of shape ``(B, C, *)``.

    Returns:
        ``[0, 2, 3, ..., x.dim() - 1]``.
    """
    return [0, *range(2, x.dim())]


def _per_channel(v: Tensor, x: Tensor) -> Tensor:
    """View a per-channel vector so that it broadcasts against ``x`` along dim 1.

    Args:
        v: tensor of shape ``(C,)`` (a parameter or a running statistic).
        x: input of shape ``(B, C, *)``.

    Returns:
        A view of ``v`` of shape ``(1, C, 1, ..., 1)`` with ``x.dim()`` dimensions.
    """
    return v.view([1, -1] + [1] * (x.dim() - 2))


def _track_batch(
    x: Tensor,
    batch_mean: Tensor,
    batch_var: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    num_batches_tracked: Tensor | None,
    momentum: float | None,
) -> None:
    """Count the batch and move the running averages towards its statistics, in place.

    .. math::
        \\hat\\mu \\leftarrow (1 - m)\\,\\hat\\mu + m\\,\\mu_B, \\qquad
        \\hat\\sigma^2 \\leftarrow (1 - m)\\,\\hat\\sigma^2 + m\\,\\frac{n}{n - 1}\\sigma_B^2

    The running variance uses the unbiased batch variance (``n`` values per channel) while the
    normalization itself uses the biased one. With ``momentum=None`` the weight is
    :math:`m = 1 / \\text{num\\_batches\\_tracked}` (counted after this batch), a cumulative moving
    average: after ``k`` batches the running mean is the plain mean of the ``k`` batch means. An empty
    batch is counted but leaves both averages unchanged.

    Args:
        x: the batch, shape ``(B, C, *)`` (only its size is used).
        batch_mean: biased batch mean, ``C`` values in any shape (e.g. ``(1, C, 1, 1)``).
        batch_var: biased batch variance, ``C`` values in any shape.
        running_mean: buffer of shape ``(C,)`` updated in place, or ``None``.
        running_var: buffer of shape ``(C,)`` updated in place, or ``None``.
        num_batches_tracked: 0-d ``long`` buffer incremented in place, or ``None``.
        momentum: the weight :math:`m` of the new batch, or ``None`` for the cumulative average.

    Returns:
        None.
    """
    with torch.no_grad():
        if num_batches_tracked is not None:
            num_batches_tracked.add_(1)
        if running_mean is None or running_var is None:
            return
        n = x.numel() // x.shape[1] if x.shape[1] > 0 else 0
        if n < 2:
            return
        if momentum is None:
            # A tensor op (no float() of a buffer): no host-device synchronisation on accelerators.
            factor: float | Tensor = 1.0 / num_batches_tracked.to(running_mean.dtype)
        else:
            factor = momentum
        mean = batch_mean.detach().reshape(-1).to(running_mean.dtype)
        unbiased_var = batch_var.detach().reshape(-1).to(running_var.dtype) * (n / (n - 1))
        running_mean.mul_(1 - factor).add_(mean * factor)
        running_var.mul_(1 - factor).add_(unbiased_var * factor)


for _name in (
    "_check_input",
    "_check_values_per_channel",
    "_reduction_dims",
    "_per_channel",
    "_track_batch",
):
    torch.fx.wrap(_name)
del _name


class _BatchNorm(nn.Module):
    """Shared implementation of netvis's batch normalization layers (see :class:`BatchNorm2d`)."""

    _version = 2
    _ranks: tuple[int, ...] = ()
    _shapes: str = ""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory))
            if bias:
                self.bias = nn.Parameter(torch.empty(num_features, **factory))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """Set the running mean to 0, the running variance to 1 and the batch counter to 0."""
        if self.running_mean is not None:
            self.running_mean.zero_()
        if self.running_var is not None:
            self.running_var.fill_(1)
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Reset the running statistics, and set :math:`\\gamma = 1`, :math:`\\beta = 0`."""
        self.reset_running_stats()
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}"
        )

    def _load_from_state_dict(
        self,
        state_dict,
        prefix,
        local_metadata,
        strict,
        missing_keys,
        unexpected_keys,
        error_msgs,
    ) -> None:
        # Checkpoints written before num_batches_tracked existed (state-dict version < 2) lack the
        # counter; keep the current one (or start from 0) instead of reporting a missing key.
        version = local_metadata.get("version", None)
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats and key not in state_dict:
            counter = self.num_batches_tracked
            if counter is None or counter.device.type == "meta":
                counter = torch.tensor(0, dtype=torch.long)
            state_dict[key] = counter
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, x: Tensor) -> Tensor:
        """Normalize ``x`` per feature/channel, then scale by :math:`\\gamma` and shift by :math:`\\beta`.

        .. math::
            y = \\gamma \\, \\frac{x - \\mu}{\\sqrt{\\sigma^2 + \\epsilon}} + \\beta

        In training mode (and in eval mode when the layer keeps no running statistics) :math:`\\mu` and
        :math:`\\sigma^2` are the batch mean and biased batch variance, and the running averages are
        updated; in eval mode with running statistics they are the running averages.

        Args:
            x: input of shape ``(B, N)`` or ``(B, N, L)`` for :class:`BatchNorm1d`, ``(B, C, P, Q)``
                for :class:`BatchNorm2d` (any memory format).

        Returns:
            Tensor of the same shape as ``x``.
        """
        x = _check_input(x, type(self).__name__, self._ranks, self._shapes, self.num_features)
        has_buffers = self.running_mean is not None and self.running_var is not None
        if self.training or not has_buffers:
            x = _check_values_per_channel(x)
            dims = _reduction_dims(x)
            mean = x.mean(dim=dims, keepdim=True)
            centred = x - mean
            var = centred.square().mean(dim=dims, keepdim=True)
            if self.training and self.track_running_stats:
                _track_batch(
                    x, mean, var, self.running_mean, self.running_var, self.num_batches_tracked, self.momentum
                )
        else:
            centred = x - _per_channel(self.running_mean, x)
            var = _per_channel(self.running_var, x)
        y = centred * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            y = y * _per_channel(self.weight, x)
        if self.bias is not None:
            y = y + _per_channel(self.bias, x)
        return y


class BatchNorm1d(_BatchNorm):
    """Batch normalization of a ``(B, N)`` or ``(B, N, L)`` batch, written from the lecture's equations.

    For a fully connected input ``(B, N)`` each entry :math:`j` gets its own statistics over the batch;
    for a sequence input ``(B, N, L)`` each channel :math:`j` gets statistics over the batch and the
    length. The normalized values are then scaled and shifted by the learned :math:`\\gamma_j, \\beta_j`:

    .. math::
        \\mu_j = \\frac{1}{n}\\sum_i x_{ij}, \\quad \\sigma_j^2 = \\frac{1}{n}\\sum_i (x_{ij} - \\mu_j)^2,
        \\quad y_{ij} = \\gamma_j \\frac{x_{ij} - \\mu_j}{\\sqrt{\\sigma_j^2 + \\epsilon}} + \\beta_j

    Same constructor, parameters, buffers and behaviour as ``torch.nn.BatchNorm1d``; see
    :class:`BatchNorm2d` for the train/eval rules and the running averages. From "Batch Normalization:
    Accelerating Deep Network Training by Reducing Internal Covariate Shift" (Ioffe & Szegedy, 2015).

    Args:
        num_features: ``N``, the number of entries/channels (size of dim 1).
        eps: :math:`\\epsilon`, added to the variance for numerical stability.
        momentum: weight of the new batch in the running averages; ``None`` for the cumulative
            moving average (weight ``1 / num_batches_tracked``).
        affine: learn :math:`\\gamma` (``weight``) and :math:`\\beta` (``bias``), each of shape ``(N,)``.
        track_running_stats: keep ``running_mean``, ``running_var`` (shape ``(N,)``) and
            ``num_batches_tracked`` buffers and use them in eval mode; if ``False`` the batch statistics
            are used in eval mode too.
        device: device of the parameters and buffers.
        dtype: floating dtype of the parameters and running statistics.
        bias: with ``affine=True``, whether to learn :math:`\\beta` (keyword only).

    Example:
        >>> import torch
        >>> bn = BatchNorm1d(4)
        >>> y = bn(torch.randn(16, 4) * 3 + 1)
        >>> torch.allclose(y.mean(0), torch.zeros(4), atol=1e-5)
        True
    """

    _ranks = (2, 3)
    _shapes = "(B, N) or (B, N, L)"


class BatchNorm2d(_BatchNorm):
    """Batch normalization of a ``(B, C, P, Q)`` batch of feature maps, written from the lecture's equations.

    Each channel :math:`c` is normalized with one mean and one variance taken over the batch and all
    spatial positions (:math:`n = B P Q` values), then scaled and shifted by the learned
    :math:`\\gamma_c, \\beta_c`:

    .. math::
        y_{bcpq} = \\gamma_c \\frac{x_{bcpq} - \\mu_c}{\\sqrt{\\sigma_c^2 + \\epsilon}} + \\beta_c,
        \\quad \\mu_c = \\frac{1}{n}\\sum_{b,p,q} x_{bcpq},
        \\quad \\sigma_c^2 = \\frac{1}{n}\\sum_{b,p,q} (x_{bcpq} - \\mu_c)^2

    In training mode the batch statistics are used and the running averages move towards them,
    :math:`\\hat\\mu \\leftarrow (1 - m)\\hat\\mu + m\\mu` and
    :math:`\\hat\\sigma^2 \\leftarrow (1 - m)\\hat\\sigma^2 + m\\frac{n}{n-1}\\sigma^2` (unbiased variance),
    counting the batch in ``num_batches_tracked``. In eval mode the running averages replace the batch
    statistics, so each image's output no longer depends on the rest of the batch. With
    ``track_running_stats=False`` there are no running averages and the batch statistics are always used.
    Same constructor, parameters, buffers and behaviour as ``torch.nn.BatchNorm2d``. From "Batch
    Normalization: Accelerating Deep Network Training by Reducing Internal Covariate Shift" (Ioffe &
    Szegedy, 2015).

    Args:
        num_features: ``C``, the number of channels (size of dim 1).
        eps: :math:`\\epsilon`, added to the variance for numerical stability.
        momentum: the weight :math:`m` of the new batch in the running averages; ``None`` for the
            cumulative moving average (:math:`m = 1 / \\text{num\\_batches\\_tracked}`).
        affine: learn :math:`\\gamma` (``weight``) and :math:`\\beta` (``bias``), each of shape ``(C,)``.
        track_running_stats: keep ``running_mean``, ``running_var`` (shape ``(C,)``) and
            ``num_batches_tracked`` buffers and use them in eval mode.
        device: device of the parameters and buffers.
        dtype: floating dtype of the parameters and running statistics.
        bias: with ``affine=True``, whether to learn :math:`\\beta` (keyword only).

    Example:
        >>> import torch
        >>> bn, ref = BatchNorm2d(3), torch.nn.BatchNorm2d(3)
        >>> x = torch.randn(8, 3, 5, 5)
        >>> torch.allclose(bn(x), ref(x), atol=1e-5)
        True
        >>> torch.allclose(bn.running_var, ref.running_var)
        True
    """

    _ranks = (4,)
    _shapes = "(B, C, P, Q)"
