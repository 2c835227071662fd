"""The trainer: repeatable, exactly resumable, files in the run folder, BN-only training, errors."""

from __future__ import annotations

import json

import pytest
import torch

from netvis.models import create
from netvis.train import TrainConfig, parse_model_option, read_checkpoint, resume_config, train

TINY = {"stage_channels": (2, 4, 4)}


def tiny(**overrides) -> TrainConfig:
    options = dict(model="resnet20_cifar", data="fashion-mnist-sample", epochs=2, batch_size=32,
                   limit_train=80, limit_test=48, model_options=dict(TINY), progress=False, device="cpu",
                   lr=0.05)
    options.update(overrides)
    return TrainConfig(**options)


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key].cpu(), b[key].cpu()), key


def test_resume_gives_exactly_the_uninterrupted_run(tmp_path):
    rng_before = torch.get_rng_state()
    straight = train(tiny(out=str(tmp_path / "a"), augment=True))
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's global RNG is untouched

    first = train(tiny(out=str(tmp_path / "b"), augment=True, stop_after=1))
    assert first.epochs_done == 1 and not first.finished
    resumed = train(resume_config(tmp_path / "b"), resume=True)
    assert resumed.epochs_done == 2 and resumed.finished
    _assert_same_weights(straight.model.state_dict(), resumed.model.state_dict())
    keys = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr")
    assert [[m[k] for k in keys] for m in straight.metrics] == [[m[k] for k in keys] for m in resumed.metrics]

    # (Both runs started from the seeded initial weights; another seed starts elsewhere.)
    other = train(tiny(epochs=1, seed=1, limit_train=32, eval_split=None))
    assert not torch.equal(straight.model.fc.weight, other.model.fc.weight)


def test_run_folder_files_and_checkpoint_contents(tmp_path):
    seen = []
    result = train(tiny(out=str(tmp_path), epochs=2), on_epoch_end=seen.append)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(line) for line in lines]
    assert [m["epoch"] for m in metrics] == [1, 2] == [m["epoch"] for m in seen]
    for m in metrics:
        assert m["images_per_s"] > 0 and 0 <= m["test_accuracy"] <= 1 and m["train_loss"] > 0
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "config.json").read_text())["model"] == "resnet20_cifar"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "config.json", "curves.png",
                                                          "metrics.jsonl"]

    payload, _ = read_checkpoint(tmp_path)
    assert payload["epoch"] == 2
    assert payload["model"] == {"name": "resnet20_cifar",
                                "options": {**TINY, "in_channels": 1, "num_classes": 10},
                                "user_options": TINY}
    assert payload["optimizer"]["state"] and payload["scheduler"]["last_epoch"] == 2 * 3
    assert set(payload["rng"]) >= {"shuffle", "augment", "torch"}
    data = payload["data"]
    assert data["name"] == "fashion-mnist-sample" and data["channels"] == 1 and data["size"] == [28, 28]
    assert data["mean"] == pytest.approx([result.preprocess.mean[0]]) and data["num_train"] == 80
    assert payload["classes"][9] == "Ankle boot"
    assert payload["metrics"] == metrics

    import netvis

    ckpt = netvis.load_checkpoint(tmp_path / "checkpoint.pt")
    _assert_same_weights(ckpt.model.state_dict(), result.model.state_dict())
    from netvis.data import load

    test = load("fashion-mnist-sample", "test")
    x = ckpt.preprocess(test.images[:8])
    torch.testing.assert_close(x, torch.stack([test[i][0] for i in range(8)]))


def test_resume_refuses_a_different_configuration(tmp_path):
    train(tiny(out=str(tmp_path), epochs=2, stop_after=1, limit_train=32, eval_split=None))
    with pytest.raises(FileExistsError, match="checkpoint.pt exists"):
        train(tiny(out=str(tmp_path), epochs=2, limit_train=32, eval_split=None))
    with pytest.raises(ValueError, match="lr: 0.05 in the checkpoint, 0.1 now"):
        train(resume_config(tmp_path, lr=0.1), resume=True)
    with pytest.raises(ValueError, match="epochs"):
        train(resume_config(tmp_path, epochs=3), resume=True)
    with pytest.raises(Exception, match="checkpoint.pt"):
        resume_config(tmp_path / "missing")


def test_bn_only_training_keeps_every_other_weight(tmp_path):
    result = train(tiny(epochs=1, trainable="bn", eval_split=None, limit_train=64))
    torch.manual_seed(0)
    initial = create("resnet20_cifar", in_channels=1, num_classes=10, **TINY).state_dict()
    trained = result.model.state_dict()
    changed = {k for k in initial if not torch.equal(initial[k], trained[k].cpu())}
    bn_params = {k for k in changed if k.endswith(("weight", "bias"))}
    assert bn_params and all(".bn" in k or k.startswith("bn") or ".downsample.1." in k for k in bn_params)
    assert "fc.weight" not in changed and "conv1.weight" not in changed
    assert any(k.endswith("running_mean") for k in changed)  # statistics still update
    # The model handed back is the trainer's own; its flags say what trained.
    assert not result.model.conv1.weight.requires_grad and result.model.bn1.weight.requires_grad


def test_config_validation_and_model_options():
    with pytest.raises(ValueError, match="optimizer"):
        tiny(optimizer="rmsprop")
    with pytest.raises(ValueError, match="epochs"):
        tiny(epochs=0)
    with pytest.raises(ValueError, match="trainable"):
        tiny(trainable="conv")
    with pytest.raises(ValueError, match="not plain data"):
        tiny(model_options={"norm_layer": torch.nn.BatchNorm2d})
    assert parse_model_option("stage_channels=(8, 16, 32)") == ("stage_channels", (8, 16, 32))
    assert parse_model_option("norm_layer=none") == ("norm_layer", "none")
    assert parse_model_option("zero_init_residual=True") == ("zero_init_residual", True)
    with pytest.raises(ValueError, match="key=value"):
        parse_model_option("just-a-value")
    with pytest.raises(ValueError, match="in_channels=3 contradicts the data"):
        train(tiny(model_options={**TINY, "in_channels": 3}, epochs=1))
    with pytest.raises(ValueError, match="fp16"):
        train(tiny(precision="fp16", epochs=1))


class PlainDataset(torch.utils.data.Dataset):
    """A data set netvis knows nothing about: float items, int labels, no images/preprocess attributes."""

    def __init__(self, source):
        self.items = [source[i] for i in range(len(source))]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def test_any_dataset_trains_like_the_in_memory_fast_path():
    from netvis.data import load

    train_set = load("fashion-mnist-sample", "train").subset(torch.arange(70))
    test_set = load("fashion-mnist-sample", "test").subset(torch.arange(40))
    fast = train(tiny(epochs=1), train_data=train_set, test_data=test_set)
    generic = train(tiny(epochs=1), train_data=PlainDataset(train_set), test_data=PlainDataset(test_set))
    assert generic.classes == [str(i) for i in range(10)]
    for key, value in fast.model.state_dict().items():
        torch.testing.assert_close(generic.model.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert generic.metrics[0]["test_accuracy"] == fast.metrics[0]["test_accuracy"]


def test_bf16_autocast_and_channels_last_path():
    """The GPU settings (autocast, channels-last) also run on the CPU; the result is close to fp32."""
    fp32 = train(tiny(epochs=1, limit_train=32, eval_split=None))
    bf16 = train(tiny(epochs=1, limit_train=32, eval_split=None, precision="bf16", channels_last=True))
    assert bf16.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert bf16.model.conv1.weight.dtype == torch.float32  # autocast keeps fp32 master weights
    assert abs(bf16.metrics[0]["train_loss"] - fp32.metrics[0]["train_loss"]) < 0.1
