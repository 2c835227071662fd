"""Dataset examples: against a brute-force top-k, in one pass, resumed, saved, and split between processes."""

from __future__ import annotations

import pytest
import torch
from features_testing import (
    brute_force_activations,
    brute_force_top_k,
    distributed_worker,
    fashion_test,  # noqa: F401 - a fixture
    no_hooks_anywhere,
    one_thread,  # noqa: F401 - a fixture
    tiny_cnn,
)
from torch import nn
from torch.utils.data import DataLoader, Dataset

from netvis.features import DatasetExamples, RunningTopK, dataset_examples, receptive_field, shard_bounds
from netvis.hooks import snapshot, state_differences

LAYERS = ["conv2", "relu2", "fc"]


def _check_against_brute_force(model, result, layer, images, k, reduce, batch_size):
    acts = brute_force_activations(model, layer, images, batch_size)
    values, indices, positions = brute_force_top_k(acts, k, reduce)
    assert result.layer == layer
    assert result.indices.shape == (acts.shape[1], k) and result.positions.shape == (acts.shape[1], k, 2)
    torch.testing.assert_close(result.values, values, rtol=0, atol=0)
    assert torch.equal(result.indices, indices)
    assert torch.equal(result.positions, positions)
    assert result.num_images == len(images)
    assert result.feature_shape == tuple(acts.shape[1:])


@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_equals_brute_force_on_fashion_mnist_test_set(fashion_test, reduce):  # noqa: F811
    model = tiny_cnn()
    images = fashion_test.preprocess(fashion_test.images)  # what the data set's items are, all at once
    results = dataset_examples(model, LAYERS, fashion_test, k=20, reduce=reduce, batch_size=768)
    assert list(results) == LAYERS
    for layer in LAYERS:
        _check_against_brute_force(model, results[layer], layer, images, 20, reduce, 768)
    # the max of a ReLU map is 0 for many images: ties, broken by the lower index
    if reduce == "max":
        assert (results["relu2"].values == 0).any() or (results["relu2"].values > 0).all()
    assert model.training and no_hooks_anywhere(model)


def test_resnet20_layers_equal_brute_force(fashion_test):  # noqa: F811
    from netvis.models import create

    torch.manual_seed(0)
    model = create("resnet20_cifar", in_channels=1, num_classes=10).eval()
    data = fashion_test.subset(range(120))
    images = data.preprocess(data.images)
    layers = ["layer1.0", "layer3", "fc"]
    results = dataset_examples(model, layers, data, k=7, batch_size=40)
    for layer in layers:
        outputs: list[torch.Tensor] = []
        handle = model.get_submodule(layer).register_forward_hook(lambda m, a, o, out=outputs: out.append(o))
        try:
            with torch.no_grad():
                for i in range(0, 120, 40):
                    model(images[i : i + 40])
        finally:
            handle.remove()
        acts = torch.cat(outputs)
        values, indices, positions = brute_force_top_k(acts, 7, "mean")
        assert torch.equal(results[layer].values, values)
        assert torch.equal(results[layer].indices, indices)
        assert torch.equal(results[layer].positions, positions)
    assert results["layer3"].feature_shape == (64, 7, 7)


def test_several_layers_in_one_pass_equal_separate_calls(fashion_test):  # noqa: F811
    model = tiny_cnn(seed=1)
    data = fashion_test.subset(range(500))
    together = dataset_examples(model, LAYERS, data, k=9, reduce="max", batch_size=128)
    for layer in LAYERS:
        alone = dataset_examples(model, model.get_submodule(layer), data, k=9, reduce="max", batch_size=128)
        assert isinstance(alone, DatasetExamples)
        assert torch.equal(alone.indices, together[layer].indices)
        assert torch.equal(alone.values, together[layer].values)
        assert torch.equal(alone.positions, together[layer].positions)


def test_inputs_dataset_loader_tensor_and_iterable_agree():
    gen = torch.Generator().manual_seed(3)
    images = torch.randn(90, 1, 28, 28, generator=gen)
    labels = torch.arange(90) % 10
    model = tiny_cnn(seed=2)

    class Pairs(Dataset):
        def __len__(self):
            return 90

        def __getitem__(self, i):
            return images[i], int(labels[i])

    ref = dataset_examples(model, "conv2", images, k=6, batch_size=30)
    runs = [
        dataset_examples(model, "conv2", Pairs(), k=6, batch_size=30),
        dataset_examples(model, "conv2", DataLoader(Pairs(), batch_size=30), k=6),
        dataset_examples(model, "conv2", ((images[i : i + 30], labels[i : i + 30]) for i in range(0, 90, 30)),
                         k=6),
        dataset_examples(model, "conv2", list(images), k=6, batch_size=30),  # a list is a data set of items
        # ... unless it holds batches: a list of (B, C, H, W) tensors or of (images, labels) batches
        dataset_examples(model, "conv2", [images[:25], images[25:60], images[60:]], k=6),
        dataset_examples(model, "conv2", [(images[:40], labels[:40]), (images[40:], labels[40:])], k=6),
        dataset_examples(model, "conv2", iter([images[:45], images[45:]]), k=6),
    ]
    for run in runs:
        assert torch.equal(run.indices, ref.indices) and torch.equal(run.values, ref.values)
    raw = (images * 40 + 128).clamp(0, 255).to(torch.uint8)  # uint8 images, preprocessed on the fly
    with_transform = dataset_examples(model, "conv2", raw, k=6, batch_size=30,
                                      transform=lambda x: (x - 128.0) / 40)
    expected = dataset_examples(model, "conv2", (raw - 128.0) / 40, k=6, batch_size=30)
    assert torch.equal(with_transform.indices, expected.indices)
    brute = brute_force_top_k(brute_force_activations(model, "conv2", images, 30), 6, "mean")
    assert torch.equal(ref.indices, brute[1])


def test_ties_prefer_the_lower_index_whatever_the_batch_size():
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU())
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.fill_(-1.0)  # every activation is relu(-1) = 0: all images tie
    images = torch.randn(50, 1, 6, 6)
    for batch_size in (1, 7, 64):
        top = dataset_examples(model, "1", images, k=5, reduce="max", batch_size=batch_size)
        assert top.indices.tolist() == [[0, 1, 2, 3, 4]] * 3
        assert top.positions.tolist() == [[[0, 0]] * 5] * 3
    # -0.0 and +0.0 tie too
    running = RunningTopK(k=2)
    running.update(torch.tensor([[-0.0], [0.0], [-0.0]]), first_index=0)
    assert running.indices.tolist() == [[0, 1]]


def test_running_top_k_merges_exactly_in_any_order():
    gen = torch.Generator().manual_seed(0)
    acts = torch.randint(0, 4, (40, 5, 3, 3), generator=gen).float()  # many ties
    whole = RunningTopK(k=6, reduce="max")
    whole.update(acts, 0)
    parts = []
    for rank in range(3):
        start, stop = shard_bounds(40, rank, 3)
        part = RunningTopK(k=6, reduce="max")
        part.update(acts[start:stop], start)
        parts.append(part)
    for order in ([0, 1, 2], [2, 0, 1]):
        merged = RunningTopK(k=6, reduce="max")
        for i in order:
            merged.merge(parts[i])
        assert torch.equal(merged.indices, whole.indices)
        assert torch.equal(merged.flat_positions, whole.flat_positions)
        assert merged.count == 40
    assert [shard_bounds(10, r, 3) for r in range(3)] == [(0, 3), (3, 6), (6, 10)]


def test_fewer_images_than_k_and_empty_data():
    top = dataset_examples(tiny_cnn(), "fc", torch.randn(3, 1, 28, 28), k=10)
    assert top.k == 3 and top.indices.shape == (10, 3)
    assert sorted(top.indices[0].tolist()) == [0, 1, 2]
    with pytest.raises(ValueError, match="empty"):
        dataset_examples(tiny_cnn(), "fc", torch.zeros(0, 1, 28, 28), k=10)


def test_save_load_round_trip(tmp_path):
    result = dataset_examples(tiny_cnn(), "conv2", torch.randn(40, 1, 28, 28), k=4, meta={"data": "noise"})
    path = result.save(tmp_path / "sub" / "conv2.pt")
    back = DatasetExamples.load(path)
    for field in ("values", "indices", "positions"):
        assert torch.equal(getattr(back, field), getattr(result, field))
    assert (back.layer, back.reduce, back.num_images, back.feature_shape, back.meta) == (
        "conv2", "mean", 40, (16, 4, 4), {"data": "noise"})
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a netvis dataset-examples file"):
        DatasetExamples.load(tmp_path / "other.pt")


class Flaky(Dataset):
    """Items of ``base``; raises at index ``fail_at`` (a disk error mid-run); counts the items read."""

    def __init__(self, base, fail_at=None):
        self.base, self.fail_at, self.reads = base, fail_at, 0

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        if i == self.fail_at:
            raise OSError(f"cannot read item {i}")
        self.reads += 1
        return self.base[i]


def test_resume_after_a_crash_equals_an_uninterrupted_run(fashion_test, tmp_path):  # noqa: F811
    model = tiny_cnn(seed=4)
    base = fashion_test.subset(range(1000))
    state = tmp_path / "state.pt"
    before = snapshot(model)
    with pytest.raises(OSError, match="cannot read item 730"):
        dataset_examples(model, LAYERS, Flaky(base, fail_at=730), k=8, batch_size=100,
                         checkpoint_path=state, checkpoint_every=200)
    assert state_differences(before, snapshot(model)) == []  # also after an error
    assert no_hooks_anywhere(model)
    assert torch.load(state, weights_only=True)["done"] == 600  # the chunk 600..729 was lost, no more
    again = Flaky(base)
    resumed = dataset_examples(model, LAYERS, again, k=8, batch_size=100, checkpoint_path=state,
                               checkpoint_every=200)
    assert again.reads == 400
    uninterrupted = dataset_examples(model, LAYERS, Flaky(base), k=8, batch_size=100)
    for layer in LAYERS:
        assert torch.equal(resumed[layer].indices, uninterrupted[layer].indices)
        assert torch.equal(resumed[layer].values, uninterrupted[layer].values)
        assert torch.equal(resumed[layer].positions, uninterrupted[layer].positions)
        assert resumed[layer].num_images == 1000
    finished = Flaky(base)  # a finished run returns at once
    dataset_examples(model, LAYERS, finished, k=8, batch_size=100, checkpoint_path=state)
    assert finished.reads == 0
    with pytest.raises(ValueError, match="different call.*k: 8 there, 9 here"):
        dataset_examples(model, LAYERS, finished, k=9, checkpoint_path=state)


def test_no_side_effects_and_clear_errors():
    model = tiny_cnn()
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    before = snapshot(model)
    dataset_examples(model, ["conv1", "fc"], torch.randn(20, 1, 28, 28), k=3, batch_size=8)
    assert state_differences(before, snapshot(model)) == []
    assert model.training and model.bn.training and no_hooks_anywhere(model)
    with pytest.raises(ValueError, match="no layer named 'conv3'.*'conv2'"):
        dataset_examples(model, "conv3", torch.randn(4, 1, 28, 28))
    with pytest.raises(ValueError, match="not part of the model"):
        dataset_examples(model, nn.Conv2d(1, 1, 1), torch.randn(4, 1, 28, 28))
    with pytest.raises(ValueError, match="reduce"):
        dataset_examples(model, "conv1", torch.randn(4, 1, 28, 28), reduce="median")
    with pytest.raises(ValueError, match="k must be"):
        dataset_examples(model, "conv1", torch.randn(4, 1, 28, 28), k=0)
    with pytest.raises(ValueError, match="given twice"):
        dataset_examples(model, ["conv1", model.conv1], torch.randn(4, 1, 28, 28))
    assert state_differences(before, snapshot(model)) == [] and no_hooks_anywhere(model)


def test_regions_outline_the_receptive_field_of_each_maximum():
    model = tiny_cnn()
    result = dataset_examples(model, "conv2", torch.randn(30, 1, 28, 28), k=4, reduce="max")
    boxes = receptive_field(model, "conv2", (1, 28, 28))
    regions = result.regions(boxes)
    assert regions.shape == (16, 4, 4)
    row, col = result.positions[3, 2].tolist()
    # conv5/2 -> maxpool2 -> conv3: unit (i, j) sees input rows 4i .. 4i + 14 (a 15 x 15 field)
    assert regions[3, 2].tolist() == [4 * row, 4 * col, 4 * row + 15, 4 * col + 15]


def test_two_processes_equal_one(fashion_test, tmp_path):  # noqa: F811
    import torch.multiprocessing as mp

    data = fashion_test.subset(range(301))  # shards [0, 150) and [150, 301): uneven
    mp.spawn(distributed_worker, args=(2, str(tmp_path / "rendezvous"), data, str(tmp_path), 5, 50), nprocs=2)
    single = dataset_examples(tiny_cnn(), LAYERS, data, k=5, reduce="max", batch_size=50)
    for layer in LAYERS:
        for rank in (0, 1):
            got = DatasetExamples.load(tmp_path / f"rank{rank}-{layer}.pt")
            assert torch.equal(got.indices, single[layer].indices)
            assert torch.equal(got.values, single[layer].values)
            assert torch.equal(got.positions, single[layer].positions)
            assert got.num_images == 301
    assert sorted(p.name for p in tmp_path.glob("state.rank*")) == ["state.rank0of2.pt", "state.rank1of2.pt"]
