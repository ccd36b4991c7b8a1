"""Progress lines of a local run: one per component, one per training phase of each fit."""

from __future__ import annotations

import logging

from histopath.console import PROGRESS_LOGGER, Console
from histopath.pipeline import progress


def _record(name: str, message: str, *args) -> logging.LogRecord:
    return logging.LogRecord(name, logging.INFO, __file__, 0, message, args, None)


def test_only_the_last_epoch_of_each_phase_and_fit_is_shown(tmp_path, caplog):
    handler = progress.ComponentProgress(Console(str(tmp_path), verbose=False))
    epochs = [("head", 1, 2), ("head", 2, 2), ("fine_tune", 1, 3), ("fine_tune", 2, 3),  # one fit, two phases
              ("train", 1, 2), ("train", 2, 2), ("train", 1, 2)]  # two folds' fits, the last unfinished
    with caplog.at_level(logging.INFO, logger=PROGRESS_LOGGER):
        handler.emit(_record("absl", progress._RUNNING, "trainer_densenet"))
        for phase, epoch, of in epochs:
            handler.emit(_record(progress.TRAINING_LOGGER, f"[{phase}] epoch {epoch}/{of} loss=0.5 auc=0.7 lr=1e-03"))
        handler.emit(_record("absl", progress._FINISHED, "trainer_densenet"))
    lines = [r.getMessage().strip() for r in caplog.records if r.name == PROGRESS_LOGGER]
    assert [line.split("  ")[0] for line in lines[1:-1]] == [
        "head epoch 2/2", "fine_tune epoch 2/3", "train epoch 2/2", "train epoch 1/2"]
    assert lines[0] == "▸ trainer_densenet" and lines[-1].startswith("✓ trainer_densenet")


def test_each_fold_says_how_long_the_folds_left_take(tmp_path, caplog, monkeypatch):
    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    handler = progress.ComponentProgress(Console(str(tmp_path), verbose=False))

    def at(seconds: float, name: str, message: str, *args) -> None:
        now[0] = 100.0 + seconds
        handler.emit(_record(name, message, *args))

    fold_done = "fold %d/%d: %d patients held out, kept %s"
    with caplog.at_level(logging.INFO, logger=PROGRESS_LOGGER):
        at(0, "absl", progress._RUNNING, "trainer_mil")
        at(50, progress.TRAINING_LOGGER, "[train] epoch 3/3 loss=0.5 auc=0.7 lr=1e-03")
        at(60, progress.CROSS_VALIDATION_LOGGER, fold_done, 1, 3, 4, {"train": 3})
        at(120, progress.CROSS_VALIDATION_LOGGER, fold_done, 2, 3, 4, {"train": 2})
        at(121, progress.CROSS_VALIDATION_LOGGER, "cross-validation: 2 folds, not 5")  # not a fold's line
        at(290, progress.TRAINING_LOGGER, "[train] epoch 2/2 loss=0.5 auc=0.7 lr=1e-03")
        at(300, "absl", progress._FINISHED, "trainer_mil")
    lines = [r.getMessage().strip() for r in caplog.records if r.name == PROGRESS_LOGGER]
    assert lines[1].startswith("train epoch 3/3")  # the fold's last epoch comes before the fold's line
    assert lines[2:4] == ["fold 1/3 done after 1 min 00 s; the 2 left take about 2 min 00 s",
                          "fold 2/3 done after 2 min 00 s; the 1 left take about 1 min 00 s"]
    assert lines[4].startswith("train epoch 2/2") and lines[5].split() == ["✓", "trainer_mil", "5", "min", "00", "s"]
