"""A data set's default run, as a new user starts it: wall time and peak memory.

    python -m bench.preset_run --dataset breakhis --data DIR [--config FILE] [--epochs N]
                               [--workdir DIR] [--output FILE.json]

Runs `histopath run --dataset D --data DIR --output WORKDIR/run` (the data set's default
preset; `--config`/`--epochs` to shorten it, recorded in the result) as a child process,
samples the RSS of the whole process tree (Beam workers included, `common.TreeRssSampler`)
and reads afterwards:

- each component's wall time from ML Metadata (`pipeline.runs.component_executions`);
- each Trainer's own wall time, CPU time and peak memory (`training_resources` in the run
  report, measured inside the Trainer by `models.resource_usage`), and how many fits its
  cross-validation made, so a shortened run's time can be scaled to the preset's epochs.

The budget the issue set: under 60 minutes and under 4 GB for the default preset on 2
cores; `within_budget` says whether this run met it.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

from bench.common import TreeRssSampler, cpu_name, write_json

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
BUDGET_SECONDS, BUDGET_BYTES = 60 * 60, 4 * 2**30


def run_preset(dataset: str, data: str, workdir: pathlib.Path, extra: List[str]) -> Dict[str, Any]:
    """Runs the CLI once into `workdir/run`; wall time, tree peak RSS, exit code and log."""
    output, log = workdir / "run", workdir / "run.log"
    command = [sys.executable, "-m", "histopath.cli", "run", "--dataset", dataset, "--data", data,
               "--output", str(output), *extra]
    environment = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    started = time.perf_counter()
    with TreeRssSampler(interval=1.0) as sampler, open(log, "w") as log_file:
        code = subprocess.call(command, stdout=log_file, stderr=subprocess.STDOUT, env=environment)
    return {"command": command[2:], "exit_code": code, "wall_seconds": round(time.perf_counter() - started, 1),
            "memory": sampler.as_dict(), "log": str(log), "output": str(output)}


def read_run(output: pathlib.Path) -> Dict[str, Any]:
    """Component wall times (ML Metadata) and the Trainers' own measures (run report)."""
    from histopath.pipeline import runs

    metadata = next(iter(sorted(output.rglob("metadata.sqlite"))), None)
    components = ({e.component_id: {"state": e.state, "seconds": round(e.seconds, 1)}
                   for e in runs.component_executions(metadata)} if metadata else {})
    report_file = output / "report" / "report.json"
    trainers: Dict[str, Any] = {}
    if report_file.exists():
        report = json.loads(report_file.read_text())
        for name, candidate in report.get("candidates", {}).items():
            cv = candidate.get("cross_validation") or {}
            trainers[name] = {"training_resources": candidate.get("training_resources"),
                              "cross_validated_patients": cv.get("patients")}
        trainers = {"winner": report.get("winner"), "pushed": report.get("pushed"), "candidates": trainers}
    return {"components": components, "trainers": trainers}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.preset_run", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, choices=("breakhis", "idc"))
    parser.add_argument("--data", required=True, help="the data set folder (the user's download)")
    parser.add_argument("--config", help="settings over the preset (e.g. fewer epochs), passed to `run`")
    parser.add_argument("--epochs", type=int, help="passed to `run --epochs`")
    parser.add_argument("--workdir", help="where the run goes (default: a new temporary folder, kept)")
    parser.add_argument("--output", help="result JSON (default bench/results/preset_run_<dataset>.json)")
    args = parser.parse_args(argv)
    workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix=f"preset-run-{args.dataset}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    extra = (["--config", args.config] if args.config else []) + \
        (["--epochs", str(args.epochs)] if args.epochs else [])
    print(f"[preset_run] histopath run --dataset {args.dataset} {' '.join(extra)} -> {workdir} "
          f"(log: {workdir / 'run.log'})", file=sys.stderr, flush=True)
    result = {"dataset": args.dataset, "cpu": cpu_name(), "cpus": os.cpu_count(),
              "shortened": bool(extra), "overrides": extra,
              "config": json.loads(pathlib.Path(args.config).read_text()) if args.config else None,
              **run_preset(args.dataset, args.data, workdir, extra)}
    result.update(read_run(pathlib.Path(result["output"])))
    peak = result["memory"]["peak_mib"] * 2**20
    result["within_budget"] = {"time": result["wall_seconds"] <= BUDGET_SECONDS, "memory": peak <= BUDGET_BYTES}
    output = pathlib.Path(args.output or REPO_ROOT / "bench" / "results" / f"preset_run_{args.dataset}.json")
    write_json(output, result)
    print(f"exit {result['exit_code']}: {result['wall_seconds'] / 60:.1f} min, peak {peak / 2**30:.2f} GiB "
          f"(process tree); within 60 min: {result['within_budget']['time']}, within 4 GB: "
          f"{result['within_budget']['memory']}")
    for name, seconds in result["components"].items():
        print(f"  {name}: {seconds['seconds']:.0f} s ({seconds['state']})")
    for name, trainer in result["trainers"].get("candidates", {}).items():
        used = trainer["training_resources"] or {}
        print(f"  trainer {name}: {used.get('wall_seconds', 0) / 60:.1f} min, peak "
              f"{used.get('peak_rss_bytes', 0) / 2**30:.2f} GiB")
    return 0 if result["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
