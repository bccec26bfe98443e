"""One command-line convention (issue 19): every command has --json, --quiet and --verbose;
grids are chosen with --small/--full-size; time limits are --max-minutes (old spellings kept);
log lines of other libraries stay off the console unless --verbose."""

from __future__ import annotations

import json
import logging

import pytest
import typer
from typer.testing import CliRunner

from theralake.cli_output import configure_logging
from theralake.pipelines.cli import app

RUNNER = CliRunner()


def _commands() -> list[tuple[str, ...]]:
    def walk(command: object, path: tuple[str, ...]) -> list[tuple[str, ...]]:
        subs = getattr(command, "commands", None)
        if subs:
            return [leaf for name, sub in sorted(subs.items()) for leaf in walk(sub, (*path, name))]
        return [path]

    return walk(typer.main.get_command(app), ())


def _help(path: tuple[str, ...]) -> str:
    res = RUNNER.invoke(app, [*path, "--help"], env={"COLUMNS": "240", "NO_COLOR": "1"})
    assert res.exit_code == 0, (path, res.output)
    return res.output


def test_every_command_shares_the_options():
    commands = _commands()
    assert len(commands) >= 19 and ("models", "list") in commands
    for path in commands:
        text = _help(path)
        for option in ("--json", "--quiet", "--verbose", "-q", "-v"):
            assert option in text, (path, option)


def test_grids_and_time_limits_have_one_name_each():
    for path in (("synth",), ("demo",)):
        text = _help(path)
        assert "--small" in text and "--full-size" in text, path
    for path in (("train-seg",), ("train-reg",)):
        assert "--max-minutes" in _help(path), path
    assert "--minutes" in _help(("train-seg",))  # the older spelling still works


def test_json_output_is_clean_json(tmp_path):
    lake = tmp_path / "lake"
    res = RUNNER.invoke(app, ["sql", "SELECT 1 AS one", "--json", "--lake", str(lake)])
    assert res.exit_code == 2  # no lake yet: the error is on stderr, nothing on stdout
    from theralake.lake import Lake

    Lake(lake)
    res = RUNNER.invoke(app, ["sql", "SELECT 1 AS one", "--json", "--lake", str(lake)])
    assert res.exit_code == 0 and json.loads(res.stdout) == [{"one": 1}]
    res = RUNNER.invoke(app, ["models", "list", "--json", "--lake", str(lake)])
    assert res.exit_code == 0 and json.loads(res.stdout) == []
    res = RUNNER.invoke(app, ["kernel", "--voxel-mm", "4.0", "--size", "3", "--json"])
    assert res.exit_code == 0
    kernel = json.loads(res.stdout)
    assert kernel["nuclide"] == "Lu-177" and kernel["central_mgy_per_mbq_s"]["(0, 0, 0)"] > 0


def test_other_libraries_info_lines_stay_off_the_console(capsys: pytest.CaptureFixture):
    """pyradiomics' and MLflow's INFO lines broke the progress bars: only WARNING and worse
    reach the console (stderr), unless --verbose."""
    noisy = logging.getLogger("radiomics.featureextractor")
    noisy.setLevel(logging.INFO)  # what pyradiomics does to its own logger
    try:
        configure_logging("WARNING")
        noisy.info("Loading parameter dictionary")
        noisy.warning("a real warning")
        out, err = capsys.readouterr()
        assert "Loading parameter dictionary" not in out + err
        assert "a real warning" in err and "radiomics.featureextractor" in err and not out
        configure_logging("INFO")  # --verbose
        noisy.info("Loading parameter dictionary")
        assert "Loading parameter dictionary" in capsys.readouterr().err
    finally:  # leave the process's logging as it was
        from theralake import cli_output

        logging.getLogger().removeHandler(cli_output._HANDLER.pop())
        logging.getLogger().setLevel(logging.WARNING)
        logging.getLogger("theralake").setLevel(logging.NOTSET)
        logging.getLogger("mlflow.sklearn").setLevel(logging.NOTSET)
