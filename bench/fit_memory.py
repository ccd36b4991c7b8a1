"""Does memory grow across the fits of one Trainer? The cross-validation loop, measured.

    python -m bench.fit_memory [--preset breakhis] [--kind densenet] [--fits 11]
                               [--images 64] [--output FILE.json]

A cross-validated Trainer fits one model per fold and per refit in one process (11 fits
for the default BreakHis preset). This bench runs that loop in two child processes,
each fitting the preset's model `--fits` times for one epoch per phase on the same small in-memory
cohort (random images at the preset's Transform size: memory, not accuracy, is measured):

- `in_process`: `cross_validation.Trainer.fit` in the Trainer's own process (Keras'
  session cleared and garbage collected before each fit), as the folds ran before;
- `fold_processes`: the same call in a child process per fit (`models.isolation`), as
  `cross_validation.cross_validate` runs the folds now.

After each fit the arm records its RSS and the peak RSS of the process that fitted; the
result is each arm's RSS per fit, its growth per fit after the first (a least-squares
slope), the highest RSS any of its processes reached, and the ratio of the two highs. The model's own epochs do not matter for the growth: a fit's graphs and weights
are what stay behind.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
from typing import Any, Dict, List, Optional

import numpy as np

from bench.common import cpu_name, write_json

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
ARMS = ("in_process", "fold_processes")


def _settings(preset: str, kind: str) -> Dict[str, Any]:
    from histopath.pipeline import config, presets

    resolved = config.resolve(presets.layer(preset), {"data_dir": "unused", "output_dir": "unused"})
    return config.model_settings(resolved, kind)


def _fit_once(trainer, data, train_patients, eval_patients, name: str) -> int:
    """One fit in this process; the peak RSS it reached (bytes)."""
    from histopath.models.resource_usage import ResourceMonitor

    with ResourceMonitor() as monitor:
        trainer.fit(data, train_patients, eval_patients, None, name)
    return monitor.peak_rss_bytes


def child(arm: str, preset: str, kind: str, fits: int, images: int, log_dir: str) -> Dict[str, List[int]]:
    """One arm in this process: its RSS (bytes) after each of `fits` fits, and the peak
    RSS of the process that fitted (this one, or each fit's child)."""
    import dataclasses

    import psutil

    from histopath.models import cross_validation
    from histopath.models.config import CandidateSettings
    from histopath.models.datasets import PatientExamples
    from histopath.models.isolation import run_in_child

    settings = CandidateSettings.from_dict(_settings(preset, kind))
    preset_training = settings.training_config()
    training_config = dataclasses.replace(preset_training, epochs=min(preset_training.epochs, 1),
                                          fine_tune_epochs=min(preset_training.fine_tune_epochs, 1),
                                          early_stopping_start_epoch=0)
    rng = np.random.default_rng(0)
    size = settings.transform_size
    data = PatientExamples(rng.integers(0, 256, (images, size, size, 3), dtype=np.uint8),
                           np.tile([0, 1], images // 2), np.repeat([f"p{i}" for i in range(8)], images // 8))
    patients = sorted(set(data.patients.tolist()))
    trainer = cross_validation.Trainer(settings.model_config(), training_config, log_dir)
    process, after, fit_peaks = psutil.Process(), [], []
    for index in range(fits):
        arguments = (trainer, data, patients[:6], patients[6:], f"fit{index}")
        fit_peaks.append(run_in_child(_fit_once, *arguments) if arm == "fold_processes" else _fit_once(*arguments))
        after.append(process.memory_info().rss)
        print(f"[fit_memory] {arm} fit {index + 1}/{fits}: RSS {after[-1] / 2**20:.0f} MiB, peak of the fit "
              f"{fit_peaks[-1] / 2**20:.0f} MiB", file=sys.stderr, flush=True)
    return {"after": after, "fit_peaks": fit_peaks}


def summarise(measured: Dict[str, List[int]]) -> Dict[str, Any]:
    """RSS after each fit, first, last and peak (MiB), the growth per fit after the first
    (slope), and the peak of the process that fitted."""
    mib = np.asarray(measured["after"], np.float64) / 2**20
    slope = float(np.polyfit(np.arange(1, len(mib)), mib[1:], 1)[0]) if len(mib) > 2 else None
    return {"rss_after_fit_mib": [round(v, 1) for v in mib], "peak_mib": round(float(mib.max()), 1),
            "first_mib": round(float(mib[0]), 1), "last_mib": round(float(mib[-1]), 1),
            "growth_per_fit_mib": None if slope is None else round(slope, 1),
            "fit_peak_mib": [round(v / 2**20, 1) for v in measured["fit_peaks"]],
            "highest_mib": round(max(float(mib.max()), max(measured["fit_peaks"]) / 2**20), 1)}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fit_memory", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="breakhis")
    parser.add_argument("--kind", default="densenet")
    parser.add_argument("--fits", type=int, default=11)
    parser.add_argument("--images", type=int, default=64, help="images of the in-memory cohort (multiple of 8)")
    parser.add_argument("--output", default=str(REPO_ROOT / "bench" / "results" / "fit_memory.json"))
    parser.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--child-output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        with tempfile.TemporaryDirectory() as log_dir:
            after = child(args.child, args.preset, args.kind, args.fits, args.images, log_dir)
        pathlib.Path(args.child_output).write_text(json.dumps(after))
        return 0
    result: Dict[str, Any] = {"preset": args.preset, "kind": args.kind, "fits": args.fits, "images": args.images,
                              "cpu": cpu_name(), "arms": {}}
    with tempfile.TemporaryDirectory() as work:
        for arm in ARMS:
            out = os.path.join(work, f"{arm}.json")
            subprocess.run([sys.executable, "-m", "bench.fit_memory", "--child", arm, "--child-output", out,
                            "--preset", args.preset, "--kind", args.kind, "--fits", str(args.fits),
                            "--images", str(args.images)],
                           check=True, env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})
            result["arms"][arm] = summarise(json.loads(pathlib.Path(out).read_text()))
    result["highest_ratio_fold_processes_over_in_process"] = round(
        result["arms"]["fold_processes"]["highest_mib"] / result["arms"]["in_process"]["highest_mib"], 2)
    write_json(pathlib.Path(args.output), result)
    for arm in ARMS:
        entry = result["arms"][arm]
        print(f"{arm}: RSS after fit 1 {entry['first_mib']:.0f} MiB, after fit {args.fits} {entry['last_mib']:.0f} MiB, "
              f"growth {entry['growth_per_fit_mib']} MiB per fit, highest {entry['highest_mib']:.0f} MiB")
    return 0


if __name__ == "__main__":
    import histopath  # noqa: F401  (pins Keras 2 before TensorFlow is imported)

    sys.exit(main())
