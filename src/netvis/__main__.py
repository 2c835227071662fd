"""``python -m netvis`` runs the command line (also under torchrun)."""

from netvis.app.cli import main

main()
