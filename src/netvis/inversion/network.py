r"""A trained inversion network (Dosovitskiy & Brox, CVPR 2016).

Instead of optimising one image per target (:func:`netvis.inversion.invert`), train an up-convolutional
decoder :math:`D_\theta` once to map a layer's features back to images,

.. math::
    \theta^* = \operatorname*{arg\,min}_\theta \; \sum_i \lVert D_\theta(\Phi(x_i)) - x_i \rVert_2^2
    \; \Big[ + \lambda_\Phi \frac{\lVert \Phi(D_\theta(\Phi(x_i))) - \Phi(x_i) \rVert_2^2}
    {\lVert \Phi(x_i) \rVert_2^2} \Big]

and reconstruct a whole batch with one forward pass. The optional bracketed feature loss (a perceptual
loss through the frozen model) sharpens reconstructions.

A. Dosovitskiy and T. Brox, "Inverting Visual Representations with Convolutional Networks", CVPR 2016.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from netvis.inversion._context import LayerLike, frozen, layer_outputs, resolve_layer
from netvis.io import atomic_save

__all__ = ["Inverter", "UpConvDecoder", "train_inverter", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "inverter.pt"
"""File name of the training checkpoint :func:`train_inverter` writes into its ``out`` folder."""

_FORMAT = "netvis.inverter"
_VERSION = 1


class UpConvDecoder(nn.Module):
    """Up-convolutional decoder from a layer's features to images, sized from the two shapes.

    Layout (Dosovitskiy & Brox use the same pattern: convolutions, then stride-2 transposed convolutions
    that double the resolution, leaky ReLUs with slope 0.2 in between):

    * feature maps ``(C_f, h, w)``: a 3x3 convolution to ``width`` channels and a second 3x3 convolution;
      flat features ``(D,)``: a linear layer to ``width x 4 x 4``;
    * ``k = ceil(log2(H / h))`` up-stages (a 4x4 stride-2 transposed convolution that halves the channels,
      at least 16, then a 3x3 convolution);
    * a 3x3 convolution to the image channels and, if ``2^k h`` is not ``H`` (e.g. 7 -> 28 is exact, 4 ->
      28 is not), a bilinear resize to ``(H, W)``.

    Args:
        feature_shape: ``(C_f, h, w)`` or ``(D,)``, the layer's output shape without the batch dimension.
        image_shape: ``(C, H, W)``.
        width: Channels after the first layer (default: ``C_f`` clipped to ``[16, 256]``; 256 for flat
            features).
        generator: Draws the initial weights (Kaiming-normal for leaky ReLU, zero biases); the global random
            state is not used.
    """

    def __init__(
        self,
        feature_shape: Sequence[int],
        image_shape: Sequence[int],
        width: int | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.feature_shape = tuple(int(s) for s in feature_shape)
        self.image_shape = tuple(int(s) for s in image_shape)
        if len(self.image_shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {self.image_shape}")
        if len(self.feature_shape) not in (1, 3):
            raise ValueError(f"feature_shape must be (C, h, w) or (D,), got {self.feature_shape}")
        channels, height, wide = self.image_shape
        flat = len(self.feature_shape) == 1
        if width is None:
            width = 256 if flat else min(256, max(16, self.feature_shape[0]))
        self.width = int(width)
        # Built on the meta device so that PyTorch's own default initialisation draws nothing from the
        # global random state; the weights are then drawn from ``generator``.
        with torch.device("meta"):
            layers: list[nn.Module] = []
            if flat:
                self.start = (self.width, min(4, height), min(4, wide))
                self.project: nn.Module | None = nn.Linear(self.feature_shape[0], math.prod(self.start))
                h, w = self.start[1:]
                layers += [nn.LeakyReLU(0.2)]
            else:
                self.project = None
                c_f, h, w = self.feature_shape
                layers += [
                    nn.Conv2d(c_f, self.width, 3, padding=1), nn.LeakyReLU(0.2),
                    nn.Conv2d(self.width, self.width, 3, padding=1), nn.LeakyReLU(0.2),
                ]
            c = self.width
            n_up = max(0, math.ceil(math.log2(max(height / h, wide / w))))
            for _ in range(n_up):
                c_out = max(16, c // 2)
                layers += [
                    nn.ConvTranspose2d(c, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
                    nn.Conv2d(c_out, c_out, 3, padding=1), nn.LeakyReLU(0.2),
                ]
                c = c_out
            layers.append(nn.Conv2d(c, channels, 3, padding=1))
            self.body = nn.Sequential(*layers)
        self.n_up = n_up
        self.to_empty(device="cpu")
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Kaiming-normal weights (leaky ReLU, slope 0.2) and zero biases, drawn from ``generator`` (None:
        a freshly seeded one; the global random state is not used)."""
        if generator is None:
            generator = torch.Generator()
            generator.seed()
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                    nn.init.kaiming_normal_(module.weight, a=0.2, nonlinearity="leaky_relu", generator=generator)
                    nn.init.zeros_(module.bias)

    def forward(self, features: Tensor) -> Tensor:
        """Map features ``(N, *feature_shape)`` to images ``(N, C, H, W)``."""
        if tuple(features.shape[1:]) != self.feature_shape:
            raise ValueError(
                f"the decoder was built for features of shape {self.feature_shape}, got "
                f"{tuple(features.shape[1:])}"
            )
        if self.project is not None:
            features = self.project(features).view(features.shape[0], *self.start)
        out = self.body(features)
        if tuple(out.shape[-2:]) != self.image_shape[1:]:
            out = F.interpolate(out, size=self.image_shape[1:], mode="bilinear", align_corners=False)
        return out


class Inverter:
    """A trained inversion network for one layer of one model: images -> features -> reconstructions.

    Made by :func:`train_inverter` or :meth:`load`. It holds the user's model (used frozen, in eval mode,
    only inside calls, with no lasting change) and the decoder (an ``nn.Module``, :attr:`decoder`).

    Attributes:
        model: The model whose layer is inverted.
        layer: Dotted name of the layer.
        decoder: The :class:`UpConvDecoder`.
        bounds: Per-channel ``(lo, hi)`` pixel range seen in training, ``(1, C, 1, 1)`` tensors; outputs
            are clamped to it.
        history: Mean training loss of every epoch so far.
        config: Training options (``lr``, ``batch_size``, ``feature_loss_weight``, ``seed``, ...).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        >>> images = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        >>> inverter = train_inverter(model, "1", images, epochs=2, batch_size=8, seed=0)
        >>> inverter(images[:5]).shape
        torch.Size([5, 1, 8, 8])
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str,
        decoder: UpConvDecoder,
        bounds: tuple[Tensor, Tensor] | None = None,
        history: Sequence[float] = (),
        config: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.layer, self.module = resolve_layer(model, layer)
        self.decoder = decoder
        self.bounds = bounds
        self.history = list(history)
        self.config = dict(config or {})

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the reconstructions."""
        return self.decoder.image_shape

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """The layer's output shape without the batch dimension."""
        return self.decoder.feature_shape

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    def to(self, device: torch.device | str) -> Inverter:
        """Move the decoder (not the user's model) to ``device``; returns ``self``."""
        self.decoder.to(device)
        if self.bounds is not None:
            self.bounds = (self.bounds[0].to(device), self.bounds[1].to(device))
        return self

    def features(self, images: Tensor) -> Tensor:
        """The layer's output for ``images`` (the forward pass stops after the layer), without gradients."""
        with frozen(self.model), torch.no_grad():
            return layer_outputs(self.model, images, {self.layer: self.module})[self.layer]

    def reconstruct(self, features: Tensor) -> Tensor:
        """Decode features ``(N, *feature_shape)`` into images ``(N, C, H, W)`` in one forward pass.

        The decoder runs in eval mode without gradients; the output is clamped to :attr:`bounds`.
        """
        training = self.decoder.training
        try:
            self.decoder.eval()
            with torch.no_grad():
                out = self.decoder(features.to(self.device))
        finally:
            self.decoder.train(training)
        if self.bounds is not None:
            out = torch.clamp(out, self.bounds[0], self.bounds[1])
        return out

    def __call__(self, images: Tensor) -> Tensor:
        """Reconstruct ``images`` ``(N, C, H, W)`` from their features at :attr:`layer`."""
        return self.reconstruct(self.features(images))

    def state(self) -> dict[str, Any]:
        """Everything :meth:`load` needs, as a dict of tensors, numbers and strings."""
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "layer": self.layer,
            "feature_shape": list(self.feature_shape),
            "image_shape": list(self.image_shape),
            "width": self.decoder.width,
            "decoder": self.decoder.state_dict(),
            "bounds": None if self.bounds is None else [b.detach().cpu() for b in self.bounds],
            "history": list(self.history),
            "config": dict(self.config),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the inverter (decoder weights and settings, not the user's model) atomically to ``path``."""
        return atomic_save(self.state(), Path(path))

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module, *, map_location: Any = "cpu") -> Inverter:
        """Load an inverter saved by :meth:`save` (or a :func:`train_inverter` checkpoint) for ``model``.

        Args:
            path: The file (or a folder holding :data:`CHECKPOINT_NAME`).
            model: The model the inverter was trained on (its layer must still exist).
            map_location: Where to put the decoder's weights.
        """
        path = Path(path)
        if path.is_dir():
            path = path / CHECKPOINT_NAME
        state = torch.load(path, map_location=map_location, weights_only=True)
        return cls._from_state(state, model, path)

    @classmethod
    def _from_state(cls, state: dict[str, Any], model: nn.Module, path: Path | str) -> Inverter:
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise ValueError(f"{path}: not a netvis inverter file")
        if state["version"] > _VERSION:
            raise ValueError(f"{path}: inverter format version {state['version']} is newer than this netvis")
        decoder = UpConvDecoder(state["feature_shape"], state["image_shape"], state["width"])
        decoder.load_state_dict(state["decoder"])
        bounds = None if state["bounds"] is None else tuple(state["bounds"])
        return cls(model, state["layer"], decoder, bounds, state["history"], state["config"])





def _images_of(item: Any) -> Tensor:
    if isinstance(item, Tensor):
        return item
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], Tensor):
        return item[0]
    raise TypeError(f"data must yield image tensors or (image, label) pairs, got {type(item).__name__}")


def _collect(batches: Any) -> Tensor:
    """Every image of an iterable of batches (or of single images) as one ``(N, C, H, W)`` tensor."""
    images = []
    for item in batches:
        x = _images_of(item)
        images.append(x[None] if x.dim() == 3 else x)
    if not images:
        raise ValueError("data is empty")
    shapes = {tuple(x.shape[1:]) for x in images}
    if len(shapes) != 1 or images[0].dim() != 4:
        raise ValueError(f"data must yield (B, C, H, W) batches or (C, H, W) images of one shape, got {shapes}")
    return torch.cat([x.detach() for x in images])


def _loader(data: Any, batch_size: int, generator: torch.Generator) -> torch.utils.data.DataLoader:
    if isinstance(data, torch.utils.data.DataLoader):
        # its dataset is re-batched here (shuffled with the seeded generator); a stream is read once
        dataset = data.dataset
        data = dataset if not isinstance(dataset, torch.utils.data.IterableDataset) else _collect(data)
    elif not isinstance(data, (Tensor, torch.utils.data.Dataset)) and isinstance(data, Iterable):
        data = _collect(data)  # a list of batches, a generator: read once, kept in memory
    if isinstance(data, Tensor):
        if data.dim() != 4:
            raise ValueError(f"an image tensor must be (N, C, H, W), got shape {tuple(data.shape)}")
        data = torch.utils.data.TensorDataset(data)
    if not isinstance(data, torch.utils.data.Dataset):
        raise TypeError(f"data must be a Dataset, a DataLoader, an iterable of batches or an (N, C, H, W) "
                        f"tensor, got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError("data is empty")
    return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True, generator=generator,
                                       num_workers=0, drop_last=False)


def train_inverter(
    model: nn.Module,
    layer: LayerLike,
    data: Any,
    *,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    feature_loss_weight: float = 0.0,
    width: int | None = None,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Inverter:
    r"""Train an up-convolutional network that inverts ``layer`` (Dosovitskiy & Brox, CVPR 2016).

    Minimises, with Adam over mini-batches,

    .. math::
        \frac{1}{N}\sum_i \overline{(D_\theta(\Phi(x_i)) - x_i)^2}
        + \lambda_\Phi \frac{\lVert \Phi(D_\theta(\Phi(x_i))) - \Phi(x_i) \rVert^2}{\lVert \Phi(x_i) \rVert^2}

    (pixel mean squared error, plus the optional feature loss through the frozen model), where
    :math:`\Phi` is the layer's output and :math:`D_\theta` an :class:`UpConvDecoder` sized from the layer's
    output shape to the image shape. From "Inverting Visual Representations with Convolutional Networks"
    (CVPR 2016).

    The model is frozen (eval mode, ``requires_grad`` off) for the call and exactly as before afterwards;
    gradients for the decoder come from ``torch.autograd.grad``. With ``out`` a checkpoint
    (``out/inverter.pt``: decoder, optimiser and shuffling-generator state, epoch, loss history) is
    written atomically (temporary file + ``os.replace``) after every epoch; ``resume=True`` continues
    from it, and a resumed run gives the same weights as an uninterrupted one. Without ``resume`` an
    existing checkpoint is overwritten.

    Args:
        model: Any ``nn.Module`` taking ``(N, C, H, W)`` images.
        layer: An ``nn.Module`` inside ``model`` or its dotted name.
        data: A ``Dataset`` of images or ``(image, label)`` pairs, an ``(N, C, H, W)`` tensor, a
            ``DataLoader`` (its data set is re-batched with ``batch_size`` and shuffled with ``seed``), or
            any other iterable of batches or images (a list, a generator: read once and kept in memory),
            in the model's input space (e.g. ``netvis.data.load(...)``).
        epochs: Total epochs (with ``resume``, training continues up to this number).
        batch_size: Mini-batch size.
        lr: Adam learning rate.
        feature_loss_weight: :math:`\lambda_\Phi` (0: pixel loss only).
        width: Decoder width (see :class:`UpConvDecoder`).
        out: Folder for the checkpoint, or None for none.
        resume: Continue from ``out``'s checkpoint when there is one (else start afresh).
        seed: Seeds the decoder's initial weights and the shuffling (explicit generators; the global
            random state is not used).
        device: Where the images go and the decoder trains (default: the model's device); the model is
            not moved, so it must be there already.
        progress: Show tqdm progress bars.

    Returns:
        The trained :class:`Inverter`.

    Raises:
        ValueError: a missing layer, empty data, or a checkpoint made for another layer or shape.
    """
    if epochs < 0 or batch_size < 1:
        raise ValueError(f"need epochs >= 0 and batch_size >= 1, got epochs={epochs}, batch_size={batch_size}")
    name, module = resolve_layer(model, layer)
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    gen = torch.Generator().manual_seed(int(seed))
    loader = _loader(data, batch_size, gen)
    modules = {name: module}
    ckpt_path = Path(out) / CHECKPOINT_NAME if out is not None else None

    with torch.inference_mode(False), torch.enable_grad(), frozen(model):
        sample = _images_of(loader.dataset[0])[None]
        with torch.no_grad():
            feature_shape = tuple(layer_outputs(model, sample.to(device), modules)[name].shape[1:])
        image_shape = tuple(sample.shape[1:])
        decoder = UpConvDecoder(feature_shape, image_shape, width, generator=torch.Generator().manual_seed(
            int(seed) + 1)).to(device)
        params = list(decoder.parameters())
        opt = torch.optim.Adam(params, lr=lr)
        config = {"lr": lr, "batch_size": batch_size, "feature_loss_weight": feature_loss_weight,
                  "seed": int(seed)}
        history: list[float] = []
        lo = hi = None
        start = 0
        if resume and ckpt_path is not None and ckpt_path.exists():
            state = torch.load(ckpt_path, map_location="cpu", weights_only=True)  # generator state: CPU
            if state.get("format") != _FORMAT or "optimizer" not in state:
                raise ValueError(f"{ckpt_path}: not a netvis inverter training checkpoint")
            mine = {"layer": name, "feature_shape": list(feature_shape), "image_shape": list(image_shape),
                    "width": decoder.width}
            theirs = {key: state[key] for key in mine}
            if mine != theirs:
                raise ValueError(f"{ckpt_path} was made for {theirs}, not {mine}; use another out folder")
            decoder.load_state_dict(state["decoder"])
            opt.load_state_dict(state["optimizer"])
            for group in opt.param_groups:  # this call's learning rate, the checkpoint's Adam moments
                group["lr"] = lr
            gen.set_state(state["generator"])
            history = list(state["history"])
            start = int(state["epoch"])
            if state["bounds"] is not None:
                lo, hi = (b.to(device) for b in state["bounds"])

        decoder.train()
        for epoch in range(start, epochs):
            total, count = 0.0, 0
            bar = tqdm(loader, desc=f"inverter {name} epoch {epoch + 1}/{epochs}", disable=not progress,
                       leave=False)
            for item in bar:
                x = _images_of(item).to(device)
                if x.is_inference():  # made under torch.inference_mode(): copy so that autograd may use it
                    x = x.clone()
                batch_lo = x.detach().amin(dim=(0, 2, 3), keepdim=True)
                batch_hi = x.detach().amax(dim=(0, 2, 3), keepdim=True)
                lo = batch_lo if lo is None else torch.minimum(lo, batch_lo)
                hi = batch_hi if hi is None else torch.maximum(hi, batch_hi)
                with torch.no_grad():
                    phi = layer_outputs(model, x, modules)[name]
                recon = decoder(phi)
                loss = F.mse_loss(recon, x)
                if feature_loss_weight > 0:
                    phi_hat = layer_outputs(model, recon, modules)[name]
                    num = (phi_hat - phi).flatten(1).pow(2).sum(1)
                    den = phi.flatten(1).pow(2).sum(1).clamp_min(1e-12)
                    loss = loss + feature_loss_weight * (num / den).mean()
                grads = torch.autograd.grad(loss, params)
                for p, g in zip(params, grads, strict=True):
                    p.grad = g
                opt.step()
                opt.zero_grad(set_to_none=True)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError(f"inverter training diverged (loss {value}); lower lr")
                total += value * x.shape[0]
                count += x.shape[0]
                bar.set_postfix(loss=f"{value:.4g}")
            history.append(total / count)
            if ckpt_path is not None:
                inverter = Inverter(model, name, decoder, (lo, hi), history, config)
                state = inverter.state()
                state.update(optimizer=opt.state_dict(), generator=gen.get_state(), epoch=epoch + 1)
                atomic_save(state, ckpt_path)
        decoder.eval()
    bounds = None if lo is None else (lo.detach(), hi.detach())
    return Inverter(model, name, decoder, bounds, history, config)
