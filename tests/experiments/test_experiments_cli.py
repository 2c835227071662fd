"""``netvis experiment``: list, run, errors."""

from __future__ import annotations

import json

from click.testing import CliRunner

from netvis.app import experiments
from netvis.app.cli import main


def test_experiment_list_names_every_experiment():
    result = CliRunner().invoke(main, ["experiment", "list"])
    assert result.exit_code == 0, result.output
    names = [line.split()[0] for line in result.output.splitlines()]
    assert names == experiments.list_experiments()
    assert names[:6] == ["depth", "bn-trainable", "bn-statistics", "bias", "sanity", "faithfulness"]


def test_experiment_runs_with_options_and_writes_the_report(tmp_path):
    out = tmp_path / "faith"
    result = CliRunner().invoke(main, [
        "experiment", "faithfulness", "--out", str(out), "--seed", "3", "--device", "cpu",
        "--option", "methods=('gradient', 'grad-cam')", "--option", "n_images=4", "--option", "steps=4",
        "--option", "baselines=mean",  # one name stands for a one-element tuple
    ])
    assert result.exit_code == 0, result.output
    assert "| gradient | mean | 4 |" in result.output and "wrote" in result.output
    saved = json.loads((out / "results.json").read_text())
    assert saved["meta"]["seed"] == 3 and saved["params"]["methods"] == ["gradient", "grad-cam"]
    assert saved["params"]["baselines"] == ["mean"]
    assert [r["method"] for r in saved["table"]] == ["gradient", "grad-cam", "random"]
    assert (out / "index.html").exists() and (out / "figures" / "curves-mean.png").exists()


def test_experiment_errors_are_clear():
    runner = CliRunner()
    result = runner.invoke(main, ["experiment", "nope"])
    assert result.exit_code != 0 and "unknown experiment 'nope'" in result.output
    result = runner.invoke(main, ["experiment", "sanity", "--option", "n_image=3"])
    assert result.exit_code != 0 and "no option 'n_image'" in result.output
    result = runner.invoke(main, ["experiment", "sanity", "--option", "not an option"])
    assert result.exit_code != 0 and "key=value" in result.output
