"""The netvis command line."""

from click.testing import CliRunner

from netvis.app.cli import main


def test_models_lists_names_with_parameter_counts():
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line.split()[1] for line in result.output.splitlines()}
    assert lines["resnet18"] == "11,689,512"
    assert lines["resnet50"] == "25,557,032"
    assert lines["densenet121"] == "7,978,856"
