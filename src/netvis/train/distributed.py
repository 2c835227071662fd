"""Data-parallel training with ``torch.distributed`` under ``torchrun``.

Launch the same ``netvis train`` command with ``torchrun --nproc_per_node=P -m netvis train ...`` (or
``python -m torch.distributed.run``). Each of the ``P`` processes (ranks):

* joins a process group from the environment torchrun sets (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): backend NCCL on GPUs (rank ``r`` uses
  ``cuda:LOCAL_RANK``), gloo on CPUs;
* visits the *same* global shuffled order (every rank draws it from the same seeded generator) and
  takes a deterministic share of each global batch, :func:`shard`: positions ``r, r + P, r + 2P, ...``
  of the batch -- the sharding of ``torch.utils.data.DistributedSampler``, applied batch by batch. The
  per-rank batch is ``global batch / P``;
* computes the loss *summed* over its share, divided by the global batch size, and adds the gradients
  of all ranks (:func:`all_reduce_gradients`, one all-reduce of a flat buffer). Every rank then holds
  the gradient of the mean loss over the global batch, exactly what one process computes on the
  whole batch, and applies the same optimizer step: the weights stay identical on every rank and
  equal (up to floating-point summation order) to a single-process run with the same global batch.

Batch normalization is the exception: a BN layer in training mode normalises with the statistics of
the batch it sees, which is the rank's share, so BN models do not match a single-process run exactly
(and each rank's running statistics differ; rank 0's are broadcast to all at the end of every epoch).
With GPUs, ``--sync-bn`` converts every ``torch.nn`` BN layer to ``torch.nn.SyncBatchNorm``, which
computes the batch statistics over all ranks. Only rank 0 writes files (checkpoints, metrics, plots).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from netvis._compat import BatchNormBase
from netvis.bn import bn_layers
from netvis.devices import resolve_device

__all__ = [
    "DistContext",
    "all_reduce_gradients",
    "all_reduce_sum",
    "broadcast_buffers",
    "init_distributed",
    "is_torchrun",
    "shard",
]


@dataclass(frozen=True)
class DistContext:
    """This process's place in a (possibly single-process) run.

    Attributes:
        rank (int): global rank, 0 for a single process.
        world_size (int): number of processes.
        local_rank (int): rank on this machine (selects the GPU).
        device (torch.device): the device this rank trains on.
        backend (str | None): ``"nccl"``, ``"gloo"`` or ``None`` for a single process.
        owns_group (bool): whether :func:`init_distributed` created the process group (and the trainer
            should destroy it when done); ``False`` when the caller had initialised it already.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the only one that writes files and shows progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1

    def barrier(self) -> None:
        """Wait for every rank (a no-op for a single process)."""
        if self.distributed:
            dist.barrier()


def is_torchrun() -> bool:
    """Whether this process was started by torchrun for a multi-process run (``WORLD_SIZE`` > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def init_distributed(device: str | torch.device = "auto") -> DistContext:
    """Join the process group torchrun prepared, or describe a single-process run.

    Under torchrun with ``WORLD_SIZE > 1`` this initialises the default process group (NCCL when the
    device is a GPU, gloo otherwise) unless it is already initialised. Call
    ``torch.distributed.destroy_process_group()`` when done (the trainer does).

    Args:
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or a ``torch.device``; under torchrun a CUDA device
            becomes ``cuda:LOCAL_RANK``.

    Returns:
        A :class:`DistContext`.
    """
    if not is_torchrun():
        return DistContext(device=resolve_device(device))
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend=backend)
    else:
        backend = dist.get_backend()
    return DistContext(rank=rank, world_size=world, local_rank=local, device=dev, backend=backend, owns_group=owns)


def shard(batch_indices: Tensor, rank: int, world_size: int) -> Tensor:
    """This rank's share of a global batch: positions ``rank, rank + world_size, ...``.

    Shares differ in size by at most one (a last, smaller batch may leave a rank with fewer items, or
    none); together they are the batch.

    Example:
        >>> shard(torch.arange(10, 20), 1, 4).tolist()
        [11, 15, 19]
    """
    return batch_indices[rank::world_size]


def all_reduce_sum(tensor: Tensor, ctx: DistContext) -> Tensor:
    """Sum ``tensor`` over all ranks, in place (a no-op for a single process); returns it."""
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_gradients(parameters: Iterable[nn.Parameter], ctx: DistContext) -> None:
    """Add every rank's gradients, in place, with one all-reduce of a flat buffer.

    Parameters without a gradient on this rank contribute zeros (and get the sum of the others).
    """
    if not ctx.distributed:
        return
    params = [p for p in parameters if p.requires_grad]
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in params:
        n = p.numel()
        chunk = flat[offset : offset + n].view_as(p)
        if p.grad is None:
            p.grad = chunk.clone()
        else:
            p.grad.copy_(chunk)
        offset += n


def broadcast_buffers(model: nn.Module, ctx: DistContext, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BN running statistics) to every rank."""
    if not ctx.distributed:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=src)


def convert_sync_batchnorm(model: nn.Module, ctx: DistContext) -> nn.Module:
    """Replace the model's ``torch.nn`` BN layers by ``torch.nn.SyncBatchNorm`` (GPU runs only).

    Raises:
        RuntimeError: not a multi-process GPU run (``SyncBatchNorm`` needs CUDA and a process group), or
            the model's BN layers are not ``torch.nn`` ones (netvis's own BN cannot be synchronised).
    """
    if not ctx.distributed or ctx.device.type != "cuda":
        raise RuntimeError(
            "--sync-bn needs a multi-process GPU run under torchrun (torch.nn.SyncBatchNorm works on CUDA "
            "only); on CPUs use a model without BN (norm_layer='none') or accept per-rank BN statistics"
        )
    foreign = [name for name, m in bn_layers(model) if not isinstance(m, BatchNormBase)]
    if foreign:
        raise RuntimeError(
            f"--sync-bn converts torch.nn BatchNorm layers only; {', '.join(foreign[:3])} are not "
            "(build the model with norm_layer='torch')"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
