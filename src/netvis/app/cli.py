"""The ``netvis`` command line: argument parsing and a lookup, no math.

Each command calls the library and hands results to :mod:`netvis.app.render`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import click
import torch

from netvis.app import experiments
from netvis.app._errors import ReportingGroup, debug_option, describe_error
from netvis.app.demo import run_demo, write_report
from netvis.app.jobs.features import run_examples
from netvis.app.jobs.inversion import run_invert, run_train_inverter
from netvis.app.jobs.saliency import run_saliency
from netvis.app.serve import run_server
from netvis.data import DataError
from netvis.models import create, list_models
from netvis.saliency import methods as saliency_methods
from netvis.saliency.methods import Option
from netvis.train import CheckpointError, TrainConfig, parse_model_option, resume_config, train
from netvis.train.evaluate import evaluate_checkpoint


@contextlib.contextmanager
def _reported(*errors: type[BaseException]) -> Iterator[None]:
    """Show ``errors`` raised in the block as a one-line error (exit status 1) instead of a traceback.

    netvis's ``CheckpointError`` and ``DataError`` are ``ValueError``\\ s. Every other error is reported on one
    line too, by :class:`~netvis.app._errors.ReportingGroup` (see :mod:`netvis.app._errors`).
    """
    try:
        yield
    except errors as exc:
        raise click.ClickException(describe_error(exc)) from exc


class _Commands(ReportingGroup):
    """The ``netvis`` group; ``saliency`` is built from the method registry each time it is looked up."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "saliency":
            return saliency_command()
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), "saliency"})


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="netvis")
@debug_option()
def main() -> None:
    """netvis: see what a CNN looks at and what its units respond to."""


@main.command("models")
def models_command() -> None:
    """List the models netvis can build, with their parameter counts."""
    for name in list_models():
        with torch.device("meta"):
            model = create(name)
        count = sum(p.numel() for p in model.parameters())
        click.echo(f"{name:<20} {count:>13,d}")


@main.command("demo")
@click.option("--out", default="netvis-report", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the report.")
@click.option("--train", "train_first", is_flag=True,
              help="Train a fresh model on the shipped sample (CPU, a few minutes) instead of the shipped checkpoint.")
@click.option("--epochs", default=4, show_default=True, type=click.IntRange(min=1), help="Epochs with --train.")
@click.option("--checkpoint", default="fashion-mnist-small", show_default=True,
              help="Checkpoint to study (path or shipped name) without --train.")
def demo_command(out: str, train_first: bool, epochs: int, checkpoint: str) -> None:
    """The whole lecture on the shipped Fashion-MNIST sample, ending in an HTML report."""
    path = run_demo(out, checkpoint=checkpoint, train=train_first, epochs=epochs)
    click.echo(f"report: {path.resolve()}")


@main.command("report")
@click.argument("checkpoint")
@click.option("--data", default="fashion-mnist-sample", show_default=True,
              help="Data set name or folder (train split for BN recalibration, test split for the rest).")
@click.option("--out", default="netvis-report", show_default=True, type=click.Path(file_okay=False))
@click.option("--limit", type=click.IntRange(min=1), help="Use at most this many images of each split.")
@click.option("--progress/--no-progress", default=True)
def report_command(checkpoint: str, data: str, out: str, limit: int | None, progress: bool) -> None:
    """A self-contained HTML report of the lecture for CHECKPOINT (a file, run folder or shipped name)."""
    with _reported(CheckpointError, DataError, FileNotFoundError):
        path = write_report(checkpoint, data, out, limit=limit, progress=progress)
    click.echo(f"report: {path.resolve()}")


@main.command("train")
@click.option("--model", help="Model (`netvis models`), e.g. resnet20_cifar; required unless --resume.")
@click.option("--data", help="Data set name (fashion-mnist, fashion-mnist-sample, cifar10) or folder.")
@click.option("--epochs", type=click.IntRange(min=1), help="Total epochs; required unless --resume.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Run folder.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Global batch size (default 128).")
@click.option("--lr", type=float, help="Peak learning rate (default 0.1 for sgd, 1e-3 for adam).")
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), help="Optimizer (default sgd).")
@click.option("--momentum", type=float, help="SGD momentum (default 0.9).")
@click.option("--schedule", type=click.Choice(["onecycle", "cosine", "none"]),
              help="LR schedule (default onecycle).")
@click.option("--weight-decay", type=float, help="Weight decay (default 5e-4).")
@click.option("--seed", type=int, help="Seed of weights, shuffling and augmentation (default 0).")
@click.option("--device", help="auto (default), cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
              help="Autocast precision (default auto: bf16/fp16 on GPUs, fp32 on the CPU).")
@click.option("--channels-last/--no-channels-last", default=None, help="Memory format (default: on GPUs).")
@click.option("--trainable", type=click.Choice(["all", "bn", "bn+fc", "all-but-bn"]),
              help="Which parameters train (default all; bn: only BatchNorm gamma and beta).")
@click.option("--augment/--no-augment", default=None, help="Random crop with padding + horizontal flip.")
@click.option("--crop-padding", type=click.IntRange(min=0),
              help="Padding of the random crop (default 4; 0: flip only).")
@click.option("--model-option", "model_options", multiple=True, metavar="KEY=VALUE",
              help="Extra model option, repeatable, e.g. --model-option norm_layer=none.")
@click.option("--limit-train", type=click.IntRange(min=1), help="Train on the first N training images only.")
@click.option("--limit-test", type=click.IntRange(min=1), help="Evaluate on the first N test images only.")
@click.option("--no-eval", is_flag=True, help="Do not evaluate on the test split after each epoch.")
@click.option("--label-smoothing", type=float, help="Cross-entropy label smoothing (default 0).")
@click.option("--sync-bn", is_flag=True, help="SyncBatchNorm across torchrun processes (GPUs only).")
@click.option("--num-workers", type=click.IntRange(min=0), help="DataLoader workers for data sets not held in memory.")
@click.option("--stop-after", type=click.IntRange(min=1), help="Stop after N epochs of this call (resume later).")
@click.option("--resume", is_flag=True, help="Continue the run in --out exactly where it stopped.")
@click.option("--progress/--no-progress", default=None, help="Progress bars (default on).")
def train_command(out: str, resume: bool, no_eval: bool, model_options: tuple[str, ...], **options) -> None:
    """Train a model; write checkpoint.pt, metrics.jsonl and curves.png to the run folder.

    Run it under `torchrun --nproc_per_node=N -m netvis train ...` for data-parallel training.
    """
    given = {key: value for key, value in options.items() if value is not None}
    if not given.get("sync_bn"):
        given.pop("sync_bn", None)
    try:
        if model_options:
            given["model_options"] = dict(parse_model_option(text) for text in model_options)
        if no_eval:
            given["eval_split"] = None
        if resume:
            config = resume_config(out, **given)
        else:
            missing = [f"--{key}" for key in ("model", "data", "epochs") if key not in given]
            if missing:
                raise click.UsageError(f"missing {', '.join(missing)} (needed unless --resume)")
            config = TrainConfig(out=out, **given)
        result = train(config, resume=resume)
    except (ValueError, FileExistsError, RuntimeError) as exc:  # CheckpointError, DataError included
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: {out} keeps the checkpoint of the last completed epoch; continue with "
                   "--resume", err=True)
        raise SystemExit(130) from None
    if result.metrics and result.run_dir is not None:
        last = result.metrics[-1]
        accuracy = last.get("test_accuracy")
        summary = f"epoch {last['epoch']}/{config.epochs}"
        if accuracy is not None:
            summary += f", test accuracy {accuracy:.2%}"
        click.echo(f"{summary}; checkpoint {result.checkpoint}")


@main.command("evaluate")
@click.argument("checkpoint")
@click.option("--data", help="Data set name or folder (default: the one the checkpoint was trained on).")
@click.option("--split", default="test", show_default=True, help="Split to evaluate.")
@click.option("--batch-size", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--limit", type=click.IntRange(min=1), help="Evaluate on the first N images only.")
@click.option("--progress/--no-progress", default=True)
def evaluate_command(checkpoint: str, data: str | None, split: str, batch_size: int, device: str,
                     limit: int | None, progress: bool) -> None:
    """Print a checkpoint's accuracy and confusion matrix on a data set."""
    with _reported(ValueError):
        result = evaluate_checkpoint(checkpoint, data, split=split, batch_size=batch_size, device=device,
                                     limit=limit, progress=progress)
    click.echo(result.format())


_SALIENCY_OWN = ("checkpoint", "images", "method", "target", "out", "weights", "device", "progress", "help")
"""Parameters of ``netvis saliency`` itself; a method option may not use these names as flags."""


def _method_flag(name: str, options: list[tuple[str, Option]]) -> click.Option:
    """One command-line flag for the option ``name`` shared by the methods in ``options``."""
    _, option = options[0]
    if name == "precision":  # every method takes it; name those that run in more than fp32
        users = ", ".join(m.name for m in saliency_methods.methods() if len(m.precisions) > 1)
        text = f"{option.help}; bf16 applies to {users}, the others run in fp32"
    else:
        users = ", ".join(method for method, _ in options)
        text = "; ".join(dict.fromkeys(o.help for _, o in options)) + f" ({users})"
    kwargs: dict = {"default": None, "help": text + "."}
    if option.type is bool:
        return click.Option([f"--{option.cli_flag}/--no-{option.cli_flag}", option.name], **kwargs)
    if option.choices is not None:
        kwargs["type"] = click.Choice([str(c) for c in option.choices])
    elif option.type is int:
        kwargs["type"] = click.INT if option.minimum is None else click.IntRange(min=int(option.minimum))
    elif option.type is float:
        kwargs["type"] = click.FLOAT if option.minimum is None else click.FloatRange(min=option.minimum)
    return click.Option([f"--{option.cli_flag}", option.name], **kwargs)


def saliency_command() -> click.Command:
    """``netvis saliency``, generated from the method registry (:mod:`netvis.saliency.methods`): the
    ``--method`` choices are the registered names and every command-line option of a method is a flag
    (``--window``, ``--layer``, ``--batch-size``, ``--precision``, ...), passed to the methods that have it."""
    by_name: dict[str, list[tuple[str, Option]]] = {}
    for method in saliency_methods.methods():
        for option in method.all_options:
            if option.cli:
                by_name.setdefault(option.name, []).append((method.name, option))
    for name, options in by_name.items():
        flag = options[0][1].cli_flag
        if flag in _SALIENCY_OWN:
            raise click.ClickException(f"option {name!r} of {options[0][0]!r} would be --{flag}, a flag of "
                                       "netvis saliency itself; rename it or give it another flag")
    defaults = [method.name for method in saliency_methods.methods() if method.lecture]

    def run(checkpoint: str, images: tuple[str, ...], methods: tuple[str, ...], target: str | None, out: str,
            weights: str | None, device: str, progress: bool, **options) -> None:
        chosen = list(methods) or defaults
        report = (lambda msg: click.echo(msg, err=True)) if progress else None
        with _reported(ValueError, FileNotFoundError, RuntimeError):
            written = run_saliency(checkpoint, images, chosen, out, target=target, weights=weights,
                                   progress=report, device=device, **options)
        click.echo(f"wrote {len(written)} files to {Path(out).resolve()}")

    params = [
        click.Argument(["checkpoint"]),
        click.Argument(["images"], nargs=-1, required=True),
        click.Option(["--method", "methods"], multiple=True, type=click.Choice(saliency_methods.names()),
                     help=f"Method to run; repeat for several (default: {', '.join(defaults)})."),
        click.Option(["--target"], help="Class index or name (default: each image's predicted class)."),
        click.Option(["--out"], required=True, type=click.Path(file_okay=False), help="Output folder."),
        click.Option(["--weights"], type=click.Path(dir_okay=False),
                     help="Local state_dict for torchvision:NAME models."),
        click.Option(["--device"], default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto."),
        click.Option(["--progress/--no-progress"], default=True),
        *(_method_flag(name, options) for name, options in by_name.items()),
    ]
    return click.Command("saliency", callback=run, params=params,
                         help="Saliency maps for IMAGES (files or sample:N) under CHECKPOINT (a checkpoint or "
                              "torchvision:NAME).",
                         short_help="Saliency maps for IMAGES under CHECKPOINT.")


@main.command("invert")
@click.argument("checkpoint")
@click.argument("image")
@click.option("--layer", "layers", multiple=True, required=True,
              help="Layer to invert (dotted name, e.g. layer1.0); repeat for several, shallow to deep.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--steps", type=click.IntRange(min=1),
              help="Optimiser iterations (default: 100 for lbfgs, 300 for adam and sgd).")
@click.option("--optimizer", type=click.Choice(["lbfgs", "adam", "sgd"]), default="lbfgs", show_default=True)
@click.option("--lr", type=float, help="Learning rate (default per optimiser).")
@click.option("--tv-weight", type=float, default=0.05, show_default=True, help="Total-variation weight.")
@click.option("--tv-beta", type=float, default=2.0, show_default=True, help="Total-variation exponent.")
@click.option("--init", type=click.Choice(["noise", "mean"]), default="noise", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the start image.")
@click.option("--progress/--no-progress", default=True)
def invert_command(checkpoint: str, image: str, layers: tuple[str, ...], out: str, **options) -> None:
    """Reconstruct IMAGE from CHECKPOINT's features at --layer (Mahendran & Vedaldi 2015).

    IMAGE is a PNG/JPG file or sample:N (test image N of the shipped Fashion-MNIST sample). Writes
    target.png, one <layer>.png per layer, inversion.png and inversion.json into --out.
    """
    given = {key: value for key, value in options.items() if value is not None}
    with _reported(ValueError, FileNotFoundError):
        summary = run_invert(checkpoint, image, layers, out, **given)
    for name, result in summary["layers"].items():
        click.echo(f"{name}: feature error {result['error']:.3%} (start {result['initial_error']:.3%}), "
                   f"{result['n_evals']} evaluations")
    click.echo(f"wrote {out}")


@main.command("train-inverter")
@click.argument("checkpoint")
@click.option("--layer", required=True, help="Layer whose features are inverted (dotted name).")
@click.option("--data", default="fashion-mnist-sample", show_default=True,
              help="Data set name or folder (its stored images go through the checkpoint's preprocess).")
@click.option("--split", default="train", show_default=True)
@click.option("--epochs", type=click.IntRange(min=0), default=10, show_default=True, help="Total epochs.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for inverter.pt.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--feature-loss-weight", type=float, default=0.0, show_default=True,
              help="Weight of the feature loss through the frozen model (0: pixel loss only).")
@click.option("--limit", type=click.IntRange(min=1), help="Train on the first N images only.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from --out/inverter.pt.")
@click.option("--progress/--no-progress", default=True)
def train_inverter_command(checkpoint: str, layer: str, data: str, out: str, **options) -> None:
    """Train a network that inverts CHECKPOINT's --layer (Dosovitskiy & Brox 2016)."""
    with _reported(ValueError, FileNotFoundError):
        _, summary = run_train_inverter(checkpoint, layer, data, out, **options)
    line = f"{summary['epochs']} epochs, final loss {summary['history'][-1]:.4g}" if summary["history"] else ""
    if "test_mse" in summary:
        line += f", test pixel MSE {summary['test_mse']:.4g}"
    click.echo(f"{line}; wrote {summary['file']}")


@main.command("examples")
@click.argument("checkpoint")
@click.option("--layer", "layers", multiple=True, required=True,
              help="Layer (dotted name, e.g. layer3 or layer2.1.conv1); repeat for several (one pass).")
@click.option("--data", help="Data set name or folder (default: the one the checkpoint was trained on).")
@click.option("--split", default="test", show_default=True, help="Split to search.")
@click.option("--k", default=20, show_default=True, type=click.IntRange(min=1), help="Images per channel.")
@click.option("--reduce", type=click.Choice(["mean", "max"]), default="mean", show_default=True,
              help="Score of an image for a channel: the mean or the max of its activation map.")
@click.option("--out", default="netvis-examples", show_default=True, type=click.Path(file_okay=False),
              help="Folder for index.html, the grids and the results (reruns resume from it).")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--limit", type=click.IntRange(min=1), help="Search the first N images only.")
@click.option("--progress/--no-progress", default=True)
def examples_command(checkpoint: str, layers: tuple[str, ...], data: str | None, split: str, k: int,
                     reduce: str, out: str, batch_size: int, device: str, limit: int | None,
                     progress: bool) -> None:
    """Find each channel's top-k images of a data set; write a grid per channel and an index.html.

    Under torchrun (torchrun --nproc_per_node=N -m netvis examples ...) the data is split between the
    processes and their results merged exactly; rank 0 writes the files.
    """
    with _reported(ValueError):
        index = run_examples(checkpoint, list(layers), data=data, split=split, k=k, reduce=reduce,
                             out=Path(out), batch_size=batch_size, device=device, limit=limit,
                             progress=progress)
    if index is not None:
        click.echo(f"wrote {index}")


@main.command("serve")
@click.argument("checkpoint")
@click.option("--data", help="Data set name or folder to browse (default: the one the checkpoint was trained on).")
@click.option("--split", default="test", show_default=True, help="Split to browse.")
@click.option("--limit", type=click.IntRange(min=1), help="Browse the first N images only.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--cache", type=click.Path(file_okay=False),
              help="Cache folder (default: RUN_DIR/.netvis-cache for a run folder, else ~/.cache/netvis/serve).")
@click.option("--allow-remote", is_flag=True, help="Allow --host other than loopback (no authentication!).")
@click.option("--allowed-host", "allowed_hosts", multiple=True,
              help="Also accept this Host header (name or name:port), e.g. the machine's name; repeatable.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1), help="Background threads.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
def serve_command(checkpoint: str, **options) -> None:
    """A local web viewer of CHECKPOINT (a file, run folder or shipped name): layers, channels, saliency,
    inversion. Open the address it prints; stop it with Ctrl-C."""
    with _reported(ValueError):
        run_server(checkpoint, **options)


@main.command("experiment")
@click.argument("name")
@click.option("--data", help="Data set name or folder (default: the setting's, the shipped sample for fast).")
@click.option("--setting", type=click.Choice(["fast", "full"]), default="fast", show_default=True,
              help="fast: a CPU, small models; full: a GPU, the full data set.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Folder for index.html, results.json and figures/ (default netvis-experiments/NAME).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every random choice.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Override one parameter of the setting, e.g. --option n_images=64; repeatable.")
@click.option("--progress/--no-progress", default=False, help="Progress bars while training.")
def experiment_command(name: str, data: str | None, setting: str, out: str | None, seed: int, device: str,
                       options: tuple[str, ...], progress: bool) -> None:
    """Run one of the lecture's experiments; `netvis experiment list` names them."""
    if name == "list":
        for known in experiments.list_experiments():
            click.echo(f"{known:<15} {experiments.get(known).title}")
        return
    with _reported(ValueError):
        overrides = dict(parse_model_option(text) for text in options)
        result = experiments.run(name, data=data, setting=setting, out=out or f"netvis-experiments/{name}",
                                 seed=seed, device=device, progress=progress, **overrides)
    click.echo(result.format())
    click.echo(f"\nwrote {result.out / 'index.html'} and {result.out / 'results.json'}")


if __name__ == "__main__":  # pragma: no cover
    main()
