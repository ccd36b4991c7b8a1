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
