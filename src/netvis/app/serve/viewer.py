"""What the web viewer computes: a checkpoint, a data set, a disk cache and a queue of background jobs.

:class:`Viewer` is independent of the web framework: :mod:`netvis.app.serve.app` only parses requests and
calls it. Every computation is a job (see :mod:`netvis.app.serve.jobs`) whose result is cached on disk under
the checkpoint's hash and the job's parameters:

======================  ========================================================================================
kind                    computes
======================  ========================================================================================
``examples``            :func:`netvis.features.dataset_examples` of one layer over the data, with each
                        example's receptive-field box (:func:`netvis.features.receptive_field`)
``filters``             :func:`netvis.features.filter_visualization` (guided backprop of one channel) on the
                        channel's top examples
``saliency``            every method of the registry (:mod:`netvis.saliency.methods`) for one image and one class
``inversion``           :func:`netvis.inversion.invert` of one image at one layer, with progress per evaluation
======================  ========================================================================================

The model is shared: every use of it holds :attr:`Viewer.model_lock` (forward hooks and guided-ReLU modes
of two threads must not meet), except inversion, which runs on its own deep copy so that a long
optimisation does not hold up the other pages.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import ipaddress
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor, nn

from netvis.app.render.figures import map_to_array, overlay_array
from netvis.app.serve.cache import Cache, FileRefused, default_cache_dir, file_sha256, params_key
from netvis.app.serve.jobs import Job, JobQueue
from netvis.app.serve.schema import (
    DEFAULT_FILTERS,
    DEFAULT_K,
    DEFAULT_STEPS,
    MAX_K,
    MAX_STEPS,
    ExamplesRequest,
    FiltersRequest,
    InversionRequest,
    SaliencyRequest,
    validate_job,
)
from netvis.data import load
from netvis.devices import resolve_device
from netvis.features import dataset_examples, filter_visualization, receptive_field
from netvis.hooks import capture_activation, eval_session
from netvis.inversion import invert, pixel_bounds
from netvis.io import ImageReadError, read_image
from netvis.saliency import default_layer
from netvis.saliency import methods as registry
from netvis.train.checkpoint import Checkpoint, load_checkpoint

__all__ = ["UploadError", "Viewer", "ViewerError", "saliency_methods"]

Progress = Callable[..., None]

DEFAULT_MAX_UPLOAD = 8 * 1024 * 1024
DEFAULT_MAX_PIXELS = 4096 * 4096

_UPLOAD_ID = re.compile(r"^[0-9a-f]{16}$")


def saliency_methods() -> list[str]:
    """The saliency methods the viewer shows, in page order: every method of the registry
    (:mod:`netvis.saliency.methods`), read when asked, so that a method registered later shows too."""
    return registry.names()


class ViewerError(ValueError):
    """A request the viewer cannot serve (unknown layer, channel out of range, ...): HTTP ``status``."""

    def __init__(self, message: str, status: int = 400, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.status = status
        self.field = field
        self.reason = message


class UploadError(ViewerError):
    """An upload is refused: 413 (too large) or 415 (not an image)."""


def png_bytes(array: np.ndarray) -> bytes:
    """PNG of a ``uint8`` array ``(H, W)``, ``(H, W, 3)`` or ``(C, H, W)`` with ``C`` 1 or 3."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buffer, format="PNG")
    return buffer.getvalue()


def _unit_to_uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip(np.nan_to_num(x), 0.0, 1.0) * 255.0).round().astype(np.uint8)


def signed_picture(grad: Tensor) -> np.ndarray:
    """A signed ``(C, H, W)`` gradient as ``uint8`` pixels: 0 is mid-grey, ``±max|g|`` black/white."""
    g = grad.detach().float().cpu()
    scale = float(g.abs().max())
    unit = 0.5 + 0.5 * g / scale if scale > 0 else torch.full_like(g, 0.5)
    return _unit_to_uint8(unit.numpy())


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Counted(nn.Module):
    """Calls ``tick()`` before every forward pass of ``model`` (used to report inversion progress)."""

    def __init__(self, model: nn.Module, tick: Callable[[], None]) -> None:
        super().__init__()
        self.model = model
        self._tick = tick

    def forward(self, x: Tensor) -> Any:
        self._tick()
        return self.model(x)


class _Scaled:
    """A job's progress callback mapped onto ``offset + scale * fraction`` (``check()`` passed through)."""

    def __init__(self, progress: Any, offset: float, scale: float) -> None:
        self._progress, self._offset, self._scale = progress, offset, scale

    def check(self) -> None:
        check = getattr(self._progress, "check", None)
        if check is not None:
            check()

    def __call__(self, fraction: float, message: str | None = None) -> None:
        self._progress(self._offset + self._scale * fraction, message)


class Viewer:
    """A checkpoint and a data set, ready to be browsed.

    Args:
        checkpoint: A checkpoint file, a run folder, a shipped name (see :func:`netvis.load_checkpoint`) or
            a loaded :class:`netvis.train.checkpoint.Checkpoint` (its ``path`` must exist).
        data: A data set name or folder (:func:`netvis.data.load`) or an in-memory netvis data set
            (with ``images``, ``targets`` and ``classes``); default: the data the checkpoint was trained on.
        split: The split to browse.
        cache: The cache folder; default ``RUN_DIR/.netvis-cache`` when ``checkpoint`` is a run folder,
            else ``~/.cache/netvis/serve``.
        limit: Use only the first ``limit`` images of the split.
        workers: Background worker threads.
        device: Where the model runs (``"cpu"``, ``"cuda"``, ``"auto"``).
        max_upload_bytes: Largest accepted upload.
        max_upload_pixels: Largest accepted upload in pixels (width times height), checked from the image
            header before decoding.
        decode_slots: Uploads decoded at the same time (a 4096 x 4096 RGBA PNG needs about 130 MB while it
            is decoded); more wait for a slot.
        max_queued: Jobs that may wait in all (beyond: HTTP 429).
        max_queued_per_client: Jobs one client may have queued or running (beyond: HTTP 429).
        job_nice: Niceness added to the job threads (``netvis serve`` uses 10: the server's own thread wins
            the CPU from the jobs).
    """

    def __init__(
        self,
        checkpoint: Any,
        *,
        data: Any = None,
        split: str = "test",
        cache: str | os.PathLike | None = None,
        limit: int | None = None,
        workers: int = 2,
        device: str = "cpu",
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
        max_upload_pixels: int = DEFAULT_MAX_PIXELS,
        decode_slots: int = 2,
        max_queued: int = 256,
        max_queued_per_client: int = 16,
        job_nice: int = 0,
    ) -> None:
        if isinstance(checkpoint, Checkpoint):
            ckpt = checkpoint
            if ckpt.path is None or not Path(ckpt.path).is_file():
                raise ValueError("a loaded checkpoint needs its file (ckpt.path) for the cache key")
        else:
            ckpt = load_checkpoint(checkpoint)
        self.checkpoint = ckpt
        self.checkpoint_hash = file_sha256(ckpt.path)
        if cache is None:
            run_dir = Path(os.fspath(checkpoint)) if isinstance(checkpoint, (str, os.PathLike)) else None
            cache = run_dir / ".netvis-cache" if run_dir is not None and run_dir.is_dir() else default_cache_dir()
        self.cache = Cache(cache, self.checkpoint_hash)
        self.device = resolve_device(device)
        self.model: nn.Module = ckpt.model.to(self.device).eval()
        self.model_lock = threading.Lock()

        dataset, self.data_name = self._load_data(data, split, ckpt)
        images = getattr(dataset, "images", None)
        if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"the viewer needs a data set held in memory as uint8 images (N, C, H, W); {self.data_name} has "
                "none (for an image folder, pass one whose images share one size, or resize them)"
            )
        targets = torch.as_tensor(getattr(dataset, "targets", torch.zeros(len(images), dtype=torch.int64)))
        if limit is not None:
            if limit < 1:
                raise ValueError(f"limit must be at least 1, got {limit}")
            images, targets = images[:limit], targets[:limit]
        if len(images) == 0:
            raise ValueError(f"{self.data_name} has no images")
        self.images = images.cpu().contiguous()
        self.targets = targets.cpu()
        self.split = split
        self.data_classes = [str(c) for c in getattr(dataset, "classes", ckpt.classes)]
        self.preprocess = ckpt.preprocess if ckpt.preprocess is not None else getattr(dataset, "preprocess", None)
        if self.preprocess is None:
            raise ValueError("neither the checkpoint nor the data set records a preprocess for uint8 images")
        self.data_hash = hashlib.sha256(self.images.numpy().tobytes()).hexdigest()[:16]
        self.max_upload_bytes = int(max_upload_bytes)
        self.max_upload_pixels = int(max_upload_pixels)
        if decode_slots < 1:
            raise ValueError(f"decode_slots must be at least 1, got {decode_slots}")
        self.decode_slots = int(decode_slots)
        self._decode = threading.BoundedSemaphore(self.decode_slots)
        probe = self.preprocess(self.images[:1])
        self.input_shape = tuple(int(s) for s in probe.shape[1:])
        self.layers = self._layer_table(probe)
        self._layer_index = {layer["name"]: layer for layer in self.layers}
        self.jobs = JobQueue(workers=workers, max_queued=max_queued, max_queued_per_client=max_queued_per_client,
                             nice=job_nice)
        self._info: dict[str, Any] | None = None
        self._data_png = lru_cache(maxsize=8192)(self._render_data_png)

    # ------------------------------------------------------------------------------------------------
    # set-up

    @staticmethod
    def _load_data(data: Any, split: str, ckpt: Any) -> tuple[Any, str]:
        if data is None:
            name = (ckpt.meta.get("data") or {}).get("name")
            if not name:
                raise ValueError("the checkpoint records no data set; pass data= (--data)")
            return load(name, split), f"{name}:{split}"
        if isinstance(data, (str, os.PathLike)):
            return load(data, split), f"{os.fspath(data)}:{split}"
        return data, getattr(data, "name", None) or type(data).__name__

    def _layer_table(self, probe: Tensor) -> list[dict[str, Any]]:
        """Every named module whose single output per forward pass is a ``(N, C, ...)`` tensor."""
        names = [name for name, _ in self.model.named_modules() if name]
        with self.model_lock, ExitStack() as stack:
            captures = {name: stack.enter_context(capture_activation(self.model, name)) for name in names}
            with eval_session(self.model, grad=False):
                self.model(probe.to(self.device))
            table = []
            for name in names:
                outputs = captures[name].outputs
                if len(outputs) != 1 or not isinstance(outputs[0], Tensor) or not 2 <= outputs[0].dim() <= 4:
                    continue
                module = self.model.get_submodule(name)
                shape = [int(s) for s in outputs[0].shape[1:]]
                table.append({
                    "name": name,
                    "type": type(module).__name__,
                    "shape": shape,
                    "channels": shape[0],
                    "depth": name.count("."),
                    "leaf": not any(True for _ in module.children()),
                })
        return table

    def close(self, timeout: float = 0.0) -> None:
        """Stop the background jobs (running ones stop at their next progress report); wait for them at most
        ``timeout`` seconds."""
        self.jobs.shutdown(wait=timeout > 0, timeout=timeout)

    @contextlib.contextmanager
    def using_model(self, progress: Any = None) -> Iterator[None]:
        """Hold :attr:`model_lock`; while waiting for it, a job's ``progress.check()`` may cancel the wait."""
        check = getattr(progress, "check", None)
        while not self.model_lock.acquire(timeout=0.05):
            if check is not None:
                check()
        try:
            yield
        finally:
            self.model_lock.release()

    # ------------------------------------------------------------------------------------------------
    # information

    def info(self) -> dict[str, Any]:
        """What the model page shows: the checkpoint, its classes and metrics, the data and the layers."""
        if self._info is None:
            self._info = self._make_info()
        return self._info

    def _make_info(self) -> dict[str, Any]:
        meta = self.checkpoint.meta
        final = meta.get("final_metrics") or {}
        metrics = {k: v for k, v in final.items() if isinstance(v, (int, float)) and math.isfinite(v)}

        try:
            cam_layer = default_layer(self.model)
        except (ValueError, TypeError):
            cam_layer = None
        return {
            "checkpoint": str(self.checkpoint.path),
            "checkpoint_hash": self.checkpoint_hash[:16],
            "model": (meta.get("model") or {}).get("name", type(self.model).__name__),
            "model_options": {k: str(v) for k, v in ((meta.get("model") or {}).get("options") or {}).items()},
            "epoch": meta.get("epoch"),
            "metrics": metrics,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "classes": list(self.checkpoint.classes),
            "data": {"name": self.data_name, "images": len(self.images), "classes": self.data_classes,
                     "image_shape": list(self.images.shape[1:])},
            "input_shape": list(self.input_shape),
            "layers": self.layers,
            "methods": saliency_methods(),
            "cam_layer": cam_layer,
            "limits": {"k": MAX_K, "steps": MAX_STEPS, "upload_bytes": self.max_upload_bytes,
                       "upload_pixels": self.max_upload_pixels},
            "defaults": {"k": DEFAULT_K, "filters": DEFAULT_FILTERS, "steps": DEFAULT_STEPS},
        }

    def data_items(self, offset: int = 0, limit: int = 48) -> dict[str, Any]:
        """A page of the data set: index, label and picture URL of each image."""
        offset = max(0, int(offset))
        limit = min(max(1, int(limit)), 500)
        items = []
        for index in range(offset, min(offset + limit, len(self.images))):
            label = int(self.targets[index])
            items.append({"index": index, "label": label, "class": self._data_class(label),
                          "ref": f"sample:{index}", "url": f"/api/data/{index}.png"})
        return {"total": len(self.images), "offset": offset, "items": items}

    def _data_class(self, label: int) -> str:
        return self.data_classes[label] if 0 <= label < len(self.data_classes) else str(label)

    def data_png(self, index: int) -> bytes:
        """PNG of data image ``index`` at its stored size."""
        if not 0 <= index < len(self.images):
            raise ViewerError(f"no image {index}: the data has images 0..{len(self.images) - 1}", 404)
        return self._data_png(index)

    def _render_data_png(self, index: int) -> bytes:
        return png_bytes(self.images[index].numpy())

    # ------------------------------------------------------------------------------------------------
    # images: data samples and uploads

    def add_upload(self, data: bytes) -> dict[str, Any]:
        """Decode, check and store an uploaded PNG or JPEG image; returns its id, reference and URL.

        The header is checked first (the format, ``max_upload_pixels``), then the image is decoded (at most
        ``decode_slots`` at a time) by :func:`netvis.io.read_image`, converted to the data's channels and
        resized to the data's image size, and stored as PNG under the SHA-256 of that PNG.

        Raises:
            UploadError: 413 when larger than the byte or pixel limit, 415 when not a sound PNG or JPEG.
        """
        if len(data) > self.max_upload_bytes:
            raise UploadError(f"upload too large: {len(data)} bytes (at most {self.max_upload_bytes})", 413)
        if not data:
            raise UploadError("empty upload: send the bytes of a PNG or JPEG image", 415)
        channels, height, width = (int(s) for s in self.images.shape[1:])
        with self._decode:
            try:
                image = read_image(data, max_pixels=self.max_upload_pixels,
                                   draft=("L" if channels == 1 else "RGB", (width, height)))
            except ImageReadError as exc:
                if exc.status == 413:
                    raise UploadError(str(exc), 413) from None
                raise UploadError(f"not an image netvis can read: {exc}; upload a PNG or JPEG file", 415) from None
            fmt, original = image.format, list(image.size)
            with image:
                picture = self._conform(image)
        png = png_bytes(picture)
        image_id = hashlib.sha256(png).hexdigest()[:16]
        self.cache.store_upload(image_id, png)
        return {"id": image_id, "ref": f"upload:{image_id}", "url": f"/api/images/{image_id}.png",
                "format": fmt, "original_size": original, "size": list(picture.shape[-2:])}

    def _conform(self, image: Any) -> np.ndarray:
        """A PIL image as ``uint8 (C, H, W)`` with the data's channels and size.

        A large image is first shrunk by an integer factor (:meth:`PIL.Image.Image.reduce`, a box filter
        that keeps at least twice the final size; alpha is premultiplied), so the alpha compositing and the
        colour conversion work on a small copy and a 4096 x 4096 upload costs little memory beyond its pixels.
        """
        channels, height, width = (int(s) for s in self.images.shape[1:])
        ImageOps.exif_transpose(image, in_place=True)  # no copy of a large image
        factor = min(image.width // (2 * width), image.height // (2 * height))
        if factor >= 2:
            if image.mode not in ("1", "L", "LA", "RGB", "RGBA", "I", "F"):
                image = image.convert("RGBA" if image.mode in ("PA", "P") and "transparency" in image.info
                                      else "RGB")
            image = image.reduce(factor)
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255)) if channels == 3 else \
                Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            image = Image.alpha_composite(background, rgba)
        image = image.convert("L" if channels == 1 else "RGB")
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=2.0)
        array = np.asarray(image, dtype=np.uint8)
        return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)

    def upload_png(self, image_id: str) -> bytes:
        """The stored PNG of an upload (a regular file in the uploads folder; never through a symlink)."""
        if not _UPLOAD_ID.match(image_id):
            raise ViewerError("no such image", 404)
        try:
            return self.cache.read_upload(image_id)
        except FileRefused:
            raise ViewerError("no such image", 404) from None

    def check_ref(self, ref: Any, field: str = "image") -> str:
        """Validate an image reference: ``sample:N`` (data image ``N``) or ``upload:<id>`` (a stored upload).

        Raises:
            ViewerError: 422 naming ``field``.
        """
        if not isinstance(ref, str):
            raise ViewerError("must be a string: sample:N or upload:<id>", 422, field)
        kind, _, value = ref.partition(":")
        if kind == "sample":
            if not (value.isascii() and value.isdigit()) or not 0 <= int(value) < len(self.images):
                raise ViewerError(f"{ref!r}: the data has images sample:0..sample:{len(self.images) - 1}", 422, field)
            return f"sample:{int(value)}"
        if kind == "upload":
            if not _UPLOAD_ID.match(value) or not self.cache.has_upload(value):
                raise ViewerError(f"{ref!r}: no such uploaded image (upload it first)", 422, field)
            return ref
        raise ViewerError(f"{ref!r}: expected sample:N or upload:<id>", 422, field)

    def image(self, ref: str) -> Tensor:
        """The ``uint8 (C, H, W)`` pixels of a (checked) reference."""
        kind, _, value = self.check_ref(ref).partition(":")
        if kind == "sample":
            return self.images[int(value)]
        try:
            data = self.cache.read_upload(value)
        except FileRefused:
            raise ViewerError(f"{ref!r}: no such uploaded image (upload it first)", 422, "image") from None
        with read_image(data, max_pixels=self.max_upload_pixels) as picture:
            return torch.from_numpy(self._conform(picture).copy())

    def _inputs(self, images: Tensor) -> Tensor:
        """``uint8 (N, C, H, W)`` to model inputs on the model's device."""
        return self.preprocess(images).to(self.device)

    def _display(self, x: Tensor) -> np.ndarray:
        """Model inputs ``(1, C, H, W)`` back to ``[0, 1]`` pixels ``(C, H, W)`` for overlays."""
        x = x.detach().cpu().float()
        if hasattr(self.preprocess, "denormalize"):
            return self.preprocess.denormalize(x)[0].clamp(0, 1).numpy()
        lo, hi = x.amin(), x.amax()
        return ((x[0] - lo) / (hi - lo).clamp_min(1e-12)).numpy()

    # ------------------------------------------------------------------------------------------------
    # jobs

    def layer(self, name: Any, field: str = "layer") -> dict[str, Any]:
        """The layer-table entry of ``name`` (a dotted module name).

        Raises:
            ViewerError: 422 naming ``field`` for an unknown layer.
        """
        if not isinstance(name, str) or name not in self._layer_index:
            shown = name if isinstance(name, str) and len(name) <= 80 else "this"
            raise ViewerError(f"unknown layer {shown!r}; see /api/model for the layers", 422, field)
        return self._layer_index[name]

    @staticmethod
    def _int(value: Any, what: str, low: int, high: int, default: int | None = None) -> int:
        if value is None and default is not None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            shown = value if isinstance(value, int) and abs(value) < 10**12 else "this"
            raise ViewerError(f"must be an integer in [{low}, {high}], got {shown!r}", 422, what)
        return value

    def submit(self, request: Any, client: str = "local") -> Job:
        """Validate a job request and queue it (or find it done or cached).

        Args:
            request: A validated request (:func:`netvis.app.serve.schema.parse_job`) or a dict to validate
                against :mod:`netvis.app.serve.schema`.
            client: Who asks (limits and fair scheduling are per client).

        Raises:
            RequestInvalid: the request does not fit the schema (422, naming the field).
            ViewerError: the request names something the viewer does not have (422, naming the field).
            JobLimit: too many jobs queued for ``client`` or in all (429).
        """
        request = validate_job(request)
        builders = {"examples": self._examples_job, "filters": self._filters_job,
                    "saliency": self._saliency_job, "inversion": self._inversion_job}
        kind = request.kind
        params, fn = builders[kind](request)
        key = self._cache_key(kind, params)
        return self.jobs.submit(kind, key, lambda progress: fn(progress, key), params=params,
                                cached=self.cache.load(kind, key), client=client)

    def _cache_key(self, kind: str, params: dict[str, Any]) -> str:
        """The cache key of a job: its kind, the data and its parameters (the same for :meth:`submit` and
        :meth:`examples`, so each finds the other's results)."""
        return params_key({"kind": kind, "data": self.data_hash, **params})

    def job(self, job_id: str) -> dict[str, Any]:
        """A job's status, progress and (when done) result."""
        snapshot = self.jobs.get(job_id)
        if snapshot is None:
            raise ViewerError("no such job", 404)
        return snapshot

    def cancel(self, job_id: str, client: str | None = None) -> dict[str, Any]:
        """Cancel a job for ``client`` (see :meth:`netvis.app.serve.jobs.JobQueue.cancel`: a job other
        clients still wait for goes on); returns its snapshot."""
        snapshot = self.jobs.cancel(job_id, client)
        if snapshot is None:
            raise ViewerError("no such job", 404)
        return snapshot

    # examples -----------------------------------------------------------------------------------------

    def _examples_params(self, layer: str, k: int, reduce: str) -> dict[str, Any]:
        return {"layer": self.layer(layer)["name"], "k": self._int(k, "k", 1, MAX_K), "reduce": reduce}

    def _examples_job(self, request: ExamplesRequest):
        params = self._examples_params(request.layer, request.k, request.reduce)
        return params, lambda progress, key: self._examples(params, progress, key)

    def examples(self, layer: str, k: int = DEFAULT_K, reduce: str = "mean",
                 progress: Progress | None = None) -> dict[str, Any]:
        """The examples result of a layer, from the cache or computed now (in the calling thread)."""
        request = validate_job({"kind": "examples", "layer": layer, "k": k, "reduce": reduce})
        params = self._examples_params(request.layer, request.k, request.reduce)
        key = self._cache_key("examples", params)
        cached = self.cache.load("examples", key)
        if cached is not None:
            return cached
        return self._examples(params, progress or (lambda *a, **kw: None), key)

    def _examples(self, params: dict[str, Any], progress: Progress, key: str) -> dict[str, Any]:
        layer, total = params["layer"], len(self.images)
        seen = 0

        def transform(batch: Tensor) -> Tensor:
            nonlocal seen
            progress(0.9 * seen / total, f"{seen} of {total} images")
            seen += batch.shape[0]
            return self.preprocess(batch).to(self.device)

        progress(0.0, f"0 of {total} images")
        with self.using_model(progress):
            result = dataset_examples(self.model, layer, self.images, k=params["k"], reduce=params["reduce"],
                                      batch_size=128, transform=transform,
                                      meta={"data": self.data_name, "checkpoint": self.checkpoint_hash[:16]})
            progress(0.92, "receptive fields")
            boxes = receptive_field(self.model, layer, self.input_shape)
        regions = result.regions(boxes)
        result.save(self.cache.folder("examples", key) / "examples.pt")
        units = []
        for c in range(result.channels):
            indices = result.indices[c].tolist()
            units.append({
                "channel": c,
                "values": [round(float(v), 6) for v in result.values[c].tolist()],
                "indices": indices,
                "labels": [int(self.targets[i]) for i in indices],
                "boxes": regions[c].tolist(),
            })
        out = {
            "layer": layer, "k": result.k, "reduce": result.reduce, "channels": result.channels,
            "num_images": result.num_images, "feature_shape": list(result.feature_shape),
            "input_size": list(self.input_shape[1:]), "units": units,
        }
        return self.cache.store("examples", key, out)

    # filters --------------------------------------------------------------------------------------------

    def _filters_job(self, request: FiltersRequest):
        examples = self._examples_params(request.layer, request.k, request.reduce)
        entry = self.layer(examples["layer"])
        channel = self._int(request.channel, "channel", 0, entry["channels"] - 1)
        n = self._int(request.n, "n", 1, examples["k"], min(DEFAULT_FILTERS, examples["k"]))
        params = {**examples, "channel": channel, "n": n}
        return params, lambda progress, key: self._filters(params, progress, key)

    def _filters(self, params: dict[str, Any], progress: Progress, key: str) -> dict[str, Any]:
        progress(0.05, "dataset examples")
        examples = self.examples(params["layer"], params["k"], params["reduce"],
                                 progress=_Scaled(progress, 0.05, 0.5))
        unit = examples["units"][params["channel"]]
        indices = unit["indices"][: params["n"]]
        progress(0.6, "guided backprop")
        x = self._inputs(self.images[indices])
        with self.using_model(progress):
            vis = filter_visualization(self.model, x, params["layer"], params["channel"], guided=True)
        items = []
        for i, index in enumerate(indices):
            url = self.cache.write_file("filters", key, f"filter_{i:03d}.png", png_bytes(signed_picture(vis.grad[i])))
            items.append({"index": index, "value": unit["values"][i], "label": unit["labels"][i],
                          "url": url, "image_url": f"/api/data/{index}.png",
                          "box": [int(v) for v in vis.crop_boxes[i].tolist()],
                          "score": float(vis.score[i])})
        out = {"layer": params["layer"], "channel": params["channel"], "input_size": list(self.input_shape[1:]),
               "items": items}
        return self.cache.store("filters", key, out)

    # saliency -------------------------------------------------------------------------------------------

    def _saliency_job(self, request: SaliencyRequest):
        ref = self.check_ref(request.image)
        target = request.target
        if target is not None:
            target = self._int(target, "target", 0, len(self.checkpoint.classes) - 1)
        known = saliency_methods()
        chosen = known if request.methods is None else request.methods
        methods = [m for m in known if m in chosen]
        params: dict[str, Any] = {"image": ref, "target": target, "methods": methods}
        if ref.startswith("sample:"):
            params["label"] = int(self.targets[int(ref.split(":")[1])])
        return params, lambda progress, key: self._saliency(params, progress, key)

    def saliency_options(self, method: str) -> dict[str, Any]:
        """The options the viewer passes to a saliency method: the registry's figure options, a window
        and stride for this model's input size, and seed 0 (each narrowed to the method's own options)."""
        height, width = self.input_shape[1:]
        window = max(2, min(height, width) // 5)
        settings = {"window": window, "stride": max(1, window // 3), "generator": 0}
        chosen = registry.get(method)
        return {**chosen.figure_options, **chosen.select(settings)}

    def _saliency(self, params: dict[str, Any], progress: Progress, key: str) -> dict[str, Any]:
        x = self._inputs(self.image(params["image"])[None])
        with self.using_model(progress), eval_session(self.model, grad=False):
            scores = self.model(x).float()
        probabilities = scores.softmax(dim=1)[0].cpu()
        predicted = int(probabilities.argmax())
        target = predicted if params["target"] is None else params["target"]
        picture = self._display(x)
        maps = []
        methods = params["methods"]
        for i, method in enumerate(methods):
            progress(i / len(methods), method)
            start = time.perf_counter()
            try:
                with self.using_model(progress):
                    saliency = registry.get(method)(self.model, x, target, **self.saliency_options(method))
            except Exception as exc:  # reported on the page; the other methods still show
                maps.append({"method": method, "error": f"{type(exc).__name__}: {exc}",
                             "seconds": round(time.perf_counter() - start, 4)})
                continue
            seconds = time.perf_counter() - start
            saliency = saliency.detach().float().cpu()[0]
            blended = overlay_array(picture, saliency, alpha=0.5)
            heat = map_to_array(saliency, size=tuple(self.input_shape[1:]))
            maps.append({
                "method": method,
                "url": self.cache.write_file("saliency", key, f"{method}.png", png_bytes(_unit_to_uint8(blended))),
                "map_url": self.cache.write_file("saliency", key, f"{method}-map.png",
                                                 png_bytes(_unit_to_uint8(heat))),
                "seconds": round(seconds, 4),
            })
        classes = list(self.checkpoint.classes)
        out = {
            "image": params["image"], "target": target, "target_class": classes[target],
            "predicted": predicted, "predicted_class": classes[predicted],
            "probabilities": [round(float(p), 6) for p in probabilities], "classes": classes,
            "label": params.get("label"), "maps": maps,
        }
        if any("error" in m for m in maps):
            return out  # shown, but not cached: the next request tries the failed methods again
        return self.cache.store("saliency", key, out)

    # inversion ------------------------------------------------------------------------------------------

    def _inversion_job(self, request: InversionRequest):
        ref = self.check_ref(request.image)
        layer = self.layer(request.layer)["name"]
        params = {"image": ref, "layer": layer, "steps": request.steps, "tv_weight": float(request.tv_weight),
                  "optimizer": request.optimizer, "seed": 0}
        return params, lambda progress, key: self._inversion(params, progress, key)

    def _inversion(self, params: dict[str, Any], progress: Progress, key: str) -> dict[str, Any]:
        x = self._inputs(self.image(params["image"])[None])
        with self.using_model(progress):
            model = copy.deepcopy(self.model)  # a private copy: a long optimisation holds no lock
        steps = params["steps"]
        expected = steps * (1.6 if params["optimizer"] == "lbfgs" else 1.0) + 2
        evaluations = 0

        def tick() -> None:
            nonlocal evaluations
            evaluations += 1
            progress(min(0.99, evaluations / expected), f"{evaluations} evaluations")

        progress(0.0, "starting")
        counted = _Counted(model, tick)
        module = model.get_submodule(params["layer"])
        result = invert(counted, x, module, steps=steps, tv_weight=params["tv_weight"],
                        optimizer=params["optimizer"], seed=params["seed"],
                        bounds=pixel_bounds(self.preprocess, x.shape[1]))
        target_url = self.cache.write_file("inversion", key, "target.png",
                                           png_bytes(_unit_to_uint8(self._display(x))))
        url = self.cache.write_file("inversion", key, "inversion.png",
                                    png_bytes(_unit_to_uint8(self._display(result.image))))
        curve = result.feature_errors
        stride = max(1, len(curve) // 100)
        out = {
            "image": params["image"], "layer": params["layer"], "steps": result.steps, "n_evals": result.n_evals,
            "error": float(result.error), "initial_error": float(result.initial_error),
            "feature_errors": [float(e) for e in curve[::stride]], "target_url": target_url, "url": url,
        }
        return self.cache.store("inversion", key, out)


def check_bind(host: str, allow_remote: bool) -> None:
    """Refuse a non-loopback address unless ``allow_remote``."""
    if not _is_loopback(host) and not allow_remote:
        raise ValueError(
            f"refusing to listen on {host}: the viewer has no authentication, so it binds to 127.0.0.1 by "
            "default; pass --allow-remote to serve it to the network"
        )

