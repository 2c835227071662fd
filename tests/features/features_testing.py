"""Tiny models, data and brute-force references for the feature-visualization tests."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def tiny_cnn(seed: int = 0, in_channels: int = 1, classes: int = 10) -> nn.Sequential:
    """conv5/2-relu-maxpool-conv3-bn-relu-gap-linear, random from ``seed``, with BN statistics set.

    Left in train mode, so that a method that forgets eval mode (or to restore train mode) shows.
    """
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(in_channels, 8, 5, stride=2),
            relu1=nn.ReLU(),
            pool=nn.MaxPool2d(2),
            conv2=nn.Conv2d(8, 16, 3),
            bn=nn.BatchNorm2d(16),
            relu2=nn.ReLU(),
            gap=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(16, classes),
        )
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if p.dim() > 1 else 0.1))
        model.bn.running_mean.copy_(torch.randn(16, generator=gen) * 0.1)
        model.bn.running_var.copy_(torch.rand(16, generator=gen) + 0.5)
    return model.train()


def brute_force_activations(model: nn.Sequential, layer: str, images: torch.Tensor, batch_size: int):
    """All of a layer's outputs in memory, computed in the same batches as the method (so bit-identical)."""
    names = list(model._modules)
    head = model[: names.index(layer) + 1]
    was = [m.training for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            return torch.cat([head(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
    finally:
        for m, flag in zip(model.modules(), was, strict=True):
            m.training = flag


def brute_force_top_k(acts: torch.Tensor, k: int, reduce: str):
    """The lecture's pseudo-code: score every image for every channel, sort, keep the best k.

    Returns ``(values, indices, positions)`` with ``torch.topk`` values and, for the indices, a stable sort
    (equal scores: lower index first), plus each winner's (row, col) of the first maximum.
    """
    if acts.dim() == 2:
        scores = acts.float()
    elif reduce == "mean":
        scores = acts.flatten(2).mean(-1)
    else:
        scores = acts.flatten(2).amax(-1)
    scores = scores.T  # (C, N)
    values = torch.topk(scores, k, dim=1).values
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    c = torch.arange(acts.shape[1])[:, None]
    if acts.dim() == 4:
        flat = acts[order, c].flatten(2).argmax(-1)
        positions = torch.stack([flat // acts.shape[3], flat % acts.shape[3]], -1)
    else:
        positions = torch.zeros(*order.shape, 2, dtype=torch.int64)
    return values, order, positions


@pytest.fixture(autouse=True)
def one_thread(one_thread):
    """tests/conftest.py's ``one_thread``, made autouse for each test module that imports it from here."""
    return one_thread


@pytest.fixture(scope="session")
def fashion_test():
    """Fashion-MNIST's 10,000 test images (skips when the data set is not installed)."""
    if not (FASHION_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    from netvis.data import load

    return load("fashion-mnist", split="test", root=FASHION_DIR, download=False)


def no_hooks_anywhere(model: nn.Module) -> bool:
    """True when no module of ``model`` holds a forward/backward hook of any kind."""
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
             "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs")
    return all(not getattr(m, n, None) for m in model.modules() for n in names)


def distributed_worker(rank: int, world: int, init_file: str, data, out_dir: str, k: int, batch_size: int):
    """One process of the 2-process test: gloo group from a file store, dataset_examples, save the results."""
    import torch.distributed as dist

    from netvis.features import dataset_examples

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results = dataset_examples(
            tiny_cnn(), ["conv2", "relu2", "fc"], data, k=k, batch_size=batch_size, reduce="max",
            checkpoint_path=Path(out_dir) / "state.pt",
        )
        for name, result in results.items():
            result.save(Path(out_dir) / f"rank{rank}-{name}.pt")
    finally:
        dist.destroy_process_group()
