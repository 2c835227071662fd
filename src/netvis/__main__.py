"""``python -m netvis`` runs the command line (also under torchrun)."""

from netvis.cli import main

main()
