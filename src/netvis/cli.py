"""The ``netvis`` command line: argument parsing and a lookup, no math.

Each command calls the library and hands results to :mod:`netvis.render`.
"""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="netvis")
def main() -> None:
    """netvis: see what a CNN looks at and what its units respond to."""


@main.command("models")
def models_command() -> None:
    """List the models netvis can build, with their parameter counts."""
    import torch

    from netvis.models import create, list_models

    for name in list_models():
        with torch.device("meta"):
            model = create(name)
        count = sum(p.numel() for p in model.parameters())
        click.echo(f"{name:<20} {count:>13,d}")


if __name__ == "__main__":  # pragma: no cover
    main()
