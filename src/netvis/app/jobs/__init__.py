"""The command-line jobs: load a target, run a library method, write its maps, figures and JSON."""
