"""Scale check of `histopath evaluate`'s scoring: peak memory and time on a large score table.

    python -m bench.evaluate_scale [--predictions 300000] [--patients 150] [--bootstrap 1000]
                                   [--seed 0] [--output-json bench/results/evaluate_scale.json]

Generates a synthetic score table (IDC-like: patients with very uneven image counts, each
patient benign or malignant with a share of malignant images, float32 probabilities
with a class signal plus a per-patient offset, so nearly every score is distinct; the
decision threshold is chosen on a separate, independently drawn "eval" table, as the
Trainer does), then runs everything `histopath evaluate` does after inference, in a
child process:

* score: `scoring.score_predictions` (image- and patient-level metrics, the patient
  bootstrap intervals, confusion matrices, calibration tables, balanced accuracy in
  hindsight, the per-patient table);
* report: the result document as `evaluate_model` assembles it (one row per image);
* write: `evaluate.write_evaluation` (the JSON and the ROC + calibration plots, in a
  temporary folder that is deleted afterwards);
* summary: `evaluate.summary_lines` (the terminal table).

The child's peak memory is the kernel's high-water mark of its resident set (VmHWM,
which starts afresh at exec, so unlike `getrusage(RUSAGE_CHILDREN)` it does not include the
parent's memory; reset before each step where the kernel allows, for per-step peaks; the
reset also lowers what `ru_maxrss` reports, so that is not used).
The target is a peak under 2 GiB. Results go to bench/results/evaluate_scale.json.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "evaluate_scale.json"
TARGET_MIB = 2048
EVAL_TABLE_SHARE = 0.1  # size of the table the decision threshold is chosen on


# --- the synthetic score table ----------------------------------------------------------

def synthetic_table(predictions: int, patients: int, seed: int = 0) -> Dict[str, Any]:
    """A score table of `predictions` images of `patients` patients.

    Image counts per patient are log-normal (a few patients hold most images, as in IDC).
    About 60 % of the patients are malignant (at least one of each class when there are
    2 or more patients), each with its own share of malignant images; benign patients have
    none. A probability is a logistic of a class shift, a per-patient offset and image
    noise (image-level AUC about 0.9), stored as float32 as a model returns it.

    Returns:
      {"labels", "probabilities" (float64 arrays of float32 values), "clusters" (patient
      index per image), "patient_ids" (one per image), "x", "y" (patch positions)}.
    """
    import numpy as np

    if patients < 1 or predictions < patients:
        raise ValueError(f"need 1 <= patients <= predictions, got {patients} patients, {predictions} predictions")
    rng = np.random.default_rng(seed)
    weights = rng.lognormal(0.0, 1.0, patients)
    counts = 1 + rng.multinomial(predictions - patients, weights / weights.sum())
    malignant = rng.random(patients) < 0.6
    if patients >= 2:
        malignant[0], malignant[1] = False, True
    share = np.where(malignant, rng.beta(2.0, 3.0, patients), 0.0)
    clusters = np.repeat(np.arange(patients), counts)
    labels = (rng.random(predictions) < share[clusters]).astype(np.int64)
    logits = -1.4 + 2.4 * labels + rng.normal(0.0, 0.6, patients)[clusters] + rng.normal(0.0, 1.2, predictions)
    probabilities = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32).astype(np.float64)
    within = np.arange(predictions) - np.repeat(np.cumsum(counts) - counts, counts)  # image index in its patient
    ids = np.array([str(10000 + 7 * p) for p in range(patients)])  # IDC-like numeric ids
    return {"labels": labels, "probabilities": probabilities, "clusters": clusters,
            "patient_ids": ids[clusters], "x": 1 + 50 * (within % 200), "y": 1 + 50 * (within // 200)}


def decision_threshold(predictions: int, patients: int, seed: int) -> float:
    """The balanced-accuracy threshold of an independent, smaller "eval" table."""
    from histopath.evaluation.operating_point import balanced_accuracy_threshold

    size = max(patients, int(predictions * EVAL_TABLE_SHARE))
    table = synthetic_table(size, patients, seed=seed + 1)
    return balanced_accuracy_threshold(table["labels"], table["probabilities"])


# --- the child: everything `histopath evaluate` does after inference ----------------------

def _peak_mib() -> float:
    """This process's resident high-water mark since exec (VmHWM), in MiB."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _rss_mib() -> float:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def _reset_peak() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def run_scoring(predictions: int, patients: int, bootstrap: int, seed: int,
                out_dir: Optional[str] = None) -> Dict[str, Any]:
    """Generates the table and runs the post-inference steps of `histopath evaluate`.

    Args:
      predictions, patients: size of the score table.
      bootstrap: patient-bootstrap resamples.
      seed: seed of the table (the threshold's table uses seed + 1) and of the bootstrap.
      out_dir: where the report and plots go; None = a temporary folder, deleted after.

    Returns:
      {"steps": [{"step", "seconds", "peak_mib", "rss_after_mib"}...], "peak_mib",
      "seconds", "per_step_peaks" (whether each step's peak was measured on its own),
      "metrics" (headline figures of the scoring), "report_bytes", "plots_written",
      "tensorflow_imported"}.
    """
    import histopath  # noqa: F401  (Keras 2 before TensorFlow, as every entry point)

    steps: List[Dict[str, Any]] = []
    per_step = True
    started_all = time.perf_counter()

    def step(name: str, work):
        nonlocal per_step
        per_step = _reset_peak() and per_step
        started = time.perf_counter()
        value = work()
        steps.append({"step": name, "seconds": round(time.perf_counter() - started, 3),
                      "peak_mib": round(_peak_mib(), 1), "rss_after_mib": round(_rss_mib(), 1)})
        return value

    evaluation = step("import", lambda: importlib.import_module("histopath.evaluation.evaluate"))
    from histopath.evaluation.scoring import score_predictions

    def generate():
        table = synthetic_table(predictions, patients, seed)
        table["threshold"] = decision_threshold(predictions, patients, seed)
        return table

    table = step("generate", generate)
    threshold = table["threshold"]
    predicted = (table["probabilities"] >= threshold).astype(int)

    scored = step("score", lambda: score_predictions(
        table["labels"], table["probabilities"], predicted, table["patient_ids"],
        threshold=threshold, bootstrap=bootstrap, seed=seed))

    def report():
        # As `evaluate_model` assembles its result after `score_predictions`.
        labels, probabilities, ids = table["labels"].tolist(), table["probabilities"].tolist(), table["patient_ids"].tolist()
        xs, ys, flags = table["x"].tolist(), table["y"].tolist(), predicted.tolist()
        return {
            "histopath_version": histopath.__version__,
            "created": "synthetic",
            "model": {"model_name": "synthetic", "model_version": 1, "model_kind": "synthetic",
                      "info": {"decision_threshold": threshold}},
            "data": {"dataset": "idc", "data_dir": "synthetic", "patients_requested": None,
                     "patients_not_found": [], "files_scanned": predictions, "files_skipped_by_layout": 0,
                     "skipped_examples": []},
            "decision_threshold": threshold,
            **scored,
            "images": [
                {"path": f"{pid}/{label}/{pid}_idx5_x{x}_y{y}_class{label}.png", "patient_id": pid,
                 "label": int(label), "probability": float(probability), "prediction": int(flag)}
                for pid, label, probability, flag, x, y in zip(ids, labels, probabilities, flags, xs, ys)
            ],
            "failed_images": [],
        }

    result = step("report", report)
    del table

    temporary = None
    if out_dir is None:
        temporary = tempfile.TemporaryDirectory(prefix="bench-evaluate-scale-")
        out_dir = temporary.name
    try:
        written = step("write", lambda: evaluation.write_evaluation(result, pathlib.Path(out_dir) / "evaluation.json"))
        report_bytes = written["json"].stat().st_size
        plots_written = all(written[key].stat().st_size > 0 for key in ("roc", "calibration"))
    finally:
        if temporary is not None:
            temporary.cleanup()
    lines = step("summary", lambda: evaluation.summary_lines(result))

    image, patient = result["image_level"], result["patient_level"]

    def figure(block, name):
        metric = block["metrics"][name]
        return {key: metric[key] for key in ("value", "ci_low", "ci_high", "bootstrap_valid")}

    return {
        "steps": steps,
        "peak_mib": max(s["peak_mib"] for s in steps),
        "seconds": round(time.perf_counter() - started_all, 3),
        "per_step_peaks": per_step,
        "decision_threshold": threshold,
        "metrics": {
            "image_level": {name: figure(image, name) for name in ("auc", "balanced_accuracy", "sensitivity",
                                                                   "specificity")},
            "patient_level": {name: figure(patient, name) for name in ("auc", "balanced_accuracy")},
            "image_balanced_accuracy_in_hindsight": image["balanced_accuracy_in_hindsight"],
            "image_ece": image["calibration"]["ece"],
            "patients_benign": patient["label_counts"]["benign"],
            "patients_malignant": patient["label_counts"]["malignant"],
            "images_malignant": image["label_counts"]["malignant"],
            "per_patient_rows": len(result["patients"]),
        },
        "report_bytes": report_bytes,
        "plots_written": plots_written,
        "summary_lines": len(lines),
        "tensorflow_imported": "tensorflow" in sys.modules,
    }


# --- the parent -------------------------------------------------------------------------

def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.evaluate_scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictions", type=int, default=300_000, help="images in the score table (default 300000)")
    parser.add_argument("--patients", type=int, default=150, help="patients (default 150)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="patient-bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the table and the bootstrap (default 0)")
    parser.add_argument("--output-json", type=pathlib.Path, default=RESULTS, help=f"results file (default {RESULTS})")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.patients < 1 or args.predictions < args.patients or args.bootstrap < 0:
        parser.error("need 1 <= --patients <= --predictions and --bootstrap >= 0")

    if args.worker:
        print(json.dumps(run_scoring(args.predictions, args.patients, args.bootstrap, args.seed)))
        return 0

    from bench.common import cpu_name, write_json

    print(f"[bench.evaluate_scale] {args.predictions:,} predictions, {args.patients} patients, "
          f"{args.bootstrap} resamples (child process) ...", flush=True)
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-m", "bench.evaluate_scale", "--worker", "--predictions", str(args.predictions),
         "--patients", str(args.patients), "--bootstrap", str(args.bootstrap), "--seed", str(args.seed)],
        capture_output=True, text=True, check=False, cwd=REPO)
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        print(completed.stderr[-3000:], file=sys.stderr)
        return completed.returncode
    child = json.loads(completed.stdout.strip().splitlines()[-1])
    for row in child["steps"]:
        print(f"  {row['step']:9s} {row['seconds']:8.2f} s   peak {row['peak_mib']:7.1f} MiB   "
              f"RSS after {row['rss_after_mib']:7.1f} MiB", flush=True)
    met = child["peak_mib"] < TARGET_MIB
    report = {
        "benchmark": "evaluate_scale",
        "predictions": args.predictions,
        "patients": args.patients,
        "bootstrap_resamples": args.bootstrap,
        "seed": args.seed,
        "peak_mib": child["peak_mib"],
        "seconds": child["seconds"],
        "child_wall_seconds": round(wall, 2),
        "target_mib": TARGET_MIB,
        "met": met,
        "peak_method": "child's VmHWM (/proc/self/status), "
                       + ("reset before each step" if child["per_step_peaks"] else "cumulative over the steps"),
        "steps": child["steps"],
        "decision_threshold": child["decision_threshold"],
        "metrics": child["metrics"],
        "report_bytes": child["report_bytes"],
        "plots_written": child["plots_written"],
        "tensorflow_imported": child["tensorflow_imported"],
        "machine": {"cpu": cpu_name(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "load_average_at_end": os.getloadavg()},
    }
    write_json(args.output_json, report)
    print(f"[bench.evaluate_scale] peak {child['peak_mib']:.1f} MiB (target < {TARGET_MIB} MiB: "
          f"{'met' if met else 'NOT met'}), {child['seconds']:.1f} s; wrote {args.output_json}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
