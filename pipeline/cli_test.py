"""`histopath run` / `compile` refuse bad input with one line and a non-zero exit."""

from __future__ import annotations

import json
import pathlib

import pytest

from histopath import cli


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "{missing}", "--dataset", "breakhis"], "does not exist"),
        (["--data", "{empty}", "--dataset", "breakhis"], "holds no files"),
        (["--data", "{empty}", "--dataset", "breakhis", "--config", "{bad_config}"], "not valid JSON"),
        (["--data", "{empty}", "--dataset", "breakhis", "--config", "{missing}"], "cannot read config file"),
        (["--data", "{records}", "--dataset", "idc"], "holds 'breakhis' records, not 'idc'"),
        (["--data", "{empty}", "--dataset", "breakhis", "--output", "gs://bucket/run"], "must be a local folder"),
    ],
)
def test_run_reports_bad_input_with_one_line_and_exit_code_1(tmp_path, capsys, args, message):
    paths = {
        "missing": tmp_path / "nope",
        "empty": tmp_path / "empty",
        "bad_config": tmp_path / "config.json",
        "records": tmp_path / "records",
    }
    paths["empty"].mkdir()
    paths["bad_config"].write_text("{not json")
    paths["records"].mkdir()
    (paths["records"] / "manifest.json").write_text(json.dumps({"dataset": "breakhis", "splits": {}}))
    argv = ["run"] + [a.format(**paths) for a in args]
    if "--output" not in argv:
        argv += ["--output", str(tmp_path / "out")]
    assert cli.main(argv) == 1
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error and error.count("\n") == 1, error
    assert not (tmp_path / "gs:").exists() and not pathlib.Path("gs:").exists()  # no URI taken as a local path


def test_wrong_dataset_name_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "--data", "x", "--dataset", "camelyon", "--output", "o"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'camelyon'" in capsys.readouterr().err


def test_presets_lists_every_recipe(capsys):
    from histopath.pipeline import presets

    assert cli.main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in presets.PRESETS:
        assert f"\n{name}" in f"\n{out}"
    assert "idc (default for idc)" in out and "needs:   densenet.weights" in out
    for name in presets.DEFAULT_PRESETS.values():  # a default run says how long it takes
        assert presets.get(name).takes and f"takes:   {presets.get(name).takes}" in out
