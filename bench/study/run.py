"""The real-data study, run by one command; its tables and figures go to docs/results/.

    python -m bench.results [--data DIR] [--workdir DIR] [--datasets idc,breakhis]
                            [--redo STEP ...] [--docs DIR] [--report-only]

Every figure comes from `--data` (default `$HISTOPATH_SHARED_DATA` or ../shared/data),
split by patient (seed 42, train/eval/test = 0.7/0.15/0.15), trained through the TFX
pipeline (`histopath run`) and scored on the TEST patients only:

  idc-records          histopath ingest --dataset idc                      (50 px patches)
  idc-bag-records      histopath ingest --dataset idc --bag-size 4         (same patient split)
  idc-densenet         histopath run, bench/configs/idc_densenet.json      (DenseNet201 on patches)
  idc-mil              histopath run, bench/configs/idc_mil.json           (MIL on 4x4-patch regions)
  idc-baseline         plain 6-convolution CNN, 10 CPU minutes (bench/baseline_cnn.py),
                       same augmentation and preprocessing as idc_densenet.json
  idc-baseline-raw     the same without stain normalisation (when the IDC config uses it)
  breakhis-records     histopath ingest --dataset breakhis
  breakhis-models      histopath run, bench/configs/breakhis.json          (both, from scratch)
  breakhis-warm-start  histopath run, bench/configs/breakhis_warm_start.json
                       (DenseNet201 initialised from the idc-densenet backbone)
  breakhis-baseline    plain 8-convolution CNN, 4 CPU minutes
  idc-patient-cv       how the IDC recipes were chosen: patient-level cross-validation on
                       the train+eval patients only (bench/patient_cv.py)

then `histopath evaluate` of every trained model on the test patients (image- and
patient-level metrics with patient-bootstrap 95 % intervals), the MIL attention's
patch-level localisation AUC on the IDC test regions (bench/mil_localisation.py), the
Trainers' images/s against each model's own rate on in-memory tensors
(bench/pipeline.compare_trainer), and the report.

Each step keeps its result in WORKDIR/<step>/result.json; a re-run skips finished steps
(`--redo STEP` runs one again; a step re-runs when a step it depends on did). The report
(bench/study/report.py) writes docs/results/results.json, the figures and the generated
tables (docs/results/*.md: metrics, patient CV, compute, reproducibility); the prose
that reads them is docs/results.md, written by hand. `--report-only` rewrites the tables
from the stored docs/results/results.json without running any step.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import subprocess
import time
from typing import Any, Dict, List, Optional

from bench.common import cpu_name, latest_artifact_dir
from bench.study import cv_tables, report, run_tables
from bench.study.steps import (
    IDC_BAG_SIZE, REPO_ROOT, SEED, Context, baseline_context_step, baseline_step, bench_config, evaluate_step,
    ingest_step, mil_regions_step, mil_tile_context_step, model_info, patch_localisation_step, patient_cv_step,
    pipeline_step, precision_speed_step, run_step, stain_normalised, throughput_step)

DEFAULT_WORKDIR = REPO_ROOT / "bench" / "results" / "real"
DEFAULT_DOCS = REPO_ROOT / "docs"
PACKAGES = ("tfx", "tensorflow", "tf-keras", "tensorflow-transform", "tensorflow-model-analysis",
            "tensorflow-data-validation", "ml-metadata", "apache-beam", "protobuf", "numpy")

# Targets of the results issue (test patients).
TARGETS = {
    "idc": {"image_level.auc": 0.96, "image_level.balanced_accuracy": 0.90},
    "breakhis": {"image_level.auc": 0.99, "image_level.balanced_accuracy": 0.95, "patient_level.accuracy": 0.95},
    "localisation": {"within_bag": 0.90},
}


def run_idc(ctx: Context) -> Dict[str, Any]:
    """IDC: ingest, both pipeline models, the baselines, evaluation, localisation, throughput."""
    source = ctx.data / "idc"
    records = run_step(ctx, "idc-records", ingest_step("idc", source))
    bags = run_step(ctx, "idc-bag-records", ingest_step("idc", source, IDC_BAG_SIZE))
    densenet = run_step(ctx, "idc-densenet", pipeline_step("idc", records["records"], "idc_densenet.json"),
                        ["idc-records"])
    mil = run_step(ctx, "idc-mil", pipeline_step("idc", bags["records"], "idc_mil.json"), ["idc-bag-records"])
    out = {"records": records, "bag_records": bags, "runs": {"densenet": densenet, "mil": mil}}
    evaluations = out["evaluations"] = {
        "densenet": run_step(ctx, "idc-densenet-eval",
                             evaluate_step(densenet["models"]["densenet"], "idc", source, records["records"]),
                             ["idc-densenet"]),
        "mil": run_step(ctx, "idc-mil-eval", mil_regions_step(mil["models"]["mil"], bags["records"]), ["idc-mil"]),
        "baseline": run_step(ctx, "idc-baseline", baseline_step(records["records"], 6, 50, 10.0, "idc_densenet.json"),
                             ["idc-records"]),
    }
    if stain_normalised("idc_densenet.json"):
        # The plain baseline has no stain normalisation: keep that bar too.
        evaluations["baseline_raw"] = run_step(
            ctx, "idc-baseline-raw", baseline_step(records["records"], 6, 50, 10.0, "idc_densenet.json", False),
            ["idc-records"])
    evaluations["densenet_localisation"] = run_step(
        ctx, "idc-densenet-localisation",
        patch_localisation_step(ctx.step_dir("idc-densenet-eval") / "evaluation.json"), ["idc-densenet-eval"])
    for kind, run in (("densenet", densenet), ("mil", mil)):
        context = evaluations[kind].get("slide_context")
        if context:  # the same test predictions, averaged over each slide at the model's own threshold
            evaluations[f"{kind}_context"] = {**context, "eval": model_info(run["models"][kind])["slide_context"]}
    sigma = float(bench_config("idc_densenet.json").get("slide_context_sigma", 0.0))
    if sigma:
        # The baselines with the same slide context as the pipeline's DenseNet.
        for key, step in (("baseline", "idc-baseline"), ("baseline_raw", "idc-baseline-raw")):
            if key in evaluations:
                evaluations[f"{key}_context"] = run_step(
                    ctx, f"{step}-context", baseline_context_step(records["records"], ctx.step_dir(step), sigma),
                    [step])
    out["throughput"] = {
        "densenet": run_step(ctx, "idc-densenet-throughput",
                             throughput_step(densenet["run_dir"], "densenet", 1024), ["idc-densenet"]),
        "mil": run_step(ctx, "idc-mil-throughput", throughput_step(mil["run_dir"], "mil", 512), ["idc-mil"]),
    }
    return out


def run_breakhis(ctx: Context, idc: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """BreakHis: ingest, both models from scratch and in float32, the warm start from the IDC
    DenseNet (when IDC ran), the baseline, evaluation and throughput."""
    source = ctx.data / "breakhis-200x-224"
    records = run_step(ctx, "breakhis-records", ingest_step("breakhis", source))
    models = run_step(ctx, "breakhis-models", pipeline_step("breakhis", records["records"], "breakhis.json"),
                      ["breakhis-records"])
    out: Dict[str, Any] = {"records": records, "runs": {"models": models}, "evaluations": {}}
    for kind in models["models"]:
        out["evaluations"][kind] = run_step(
            ctx, f"breakhis-{kind}-eval",
            evaluate_step(models["models"][kind], "breakhis", source, records["records"]), ["breakhis-models"])
    if idc is not None:
        from histopath.models.densenet import BACKBONE_WEIGHTS_FILE

        weights = latest_artifact_dir(pathlib.Path(idc["runs"]["densenet"]["run_dir"]) / "pipeline_root"
                                      / "trainer_densenet" / "model_run" / "*") / BACKBONE_WEIGHTS_FILE
        warm = run_step(ctx, "breakhis-warm-start",
                        pipeline_step("breakhis", records["records"], "breakhis_warm_start.json",
                                      {"densenet.weights": str(weights)}),
                        ["breakhis-records", "idc-densenet"])
        out["runs"]["warm_start"] = warm
        out["evaluations"]["densenet_warm_start"] = run_step(
            ctx, "breakhis-warm-start-eval",
            evaluate_step(warm["models"]["densenet"], "breakhis", source, records["records"]),
            ["breakhis-warm-start"])
    # The same two models in float32: does mixed bfloat16 (used above) keep accuracy?
    fp32 = run_step(ctx, "breakhis-models-fp32",
                    pipeline_step("breakhis", records["records"], "breakhis.json",
                                  {"densenet.mixed_precision": None, "mil.mixed_precision": None,
                                   "model_name": "breakhis-fp32"}),
                    ["breakhis-records"])
    out["runs"]["models_fp32"] = fp32
    for kind in fp32["models"]:
        out["evaluations"][f"{kind}_fp32"] = run_step(
            ctx, f"breakhis-{kind}-fp32-eval",
            evaluate_step(fp32["models"][kind], "breakhis", source, records["records"]), ["breakhis-models-fp32"])
    out["evaluations"]["baseline"] = run_step(ctx, "breakhis-baseline",
                                              baseline_step(records["records"], 8, 128, 4.0), ["breakhis-records"])
    out["throughput"] = {kind: run_step(ctx, f"breakhis-{kind}-throughput",
                                        throughput_step(models["run_dir"], kind, 512), ["breakhis-models"])
                         for kind in models["models"]}
    return out


def run_idc_patient_cv(ctx: Context, idc: Dict[str, Any]) -> None:
    """The IDC recipe CV, then the MIL's tile probabilities with the slide-context width it chose."""
    ingest_steps = ["idc-records", "idc-bag-records"]
    idc["recipe_cv"] = run_step(ctx, "idc-patient-cv",
                                patient_cv_step(idc["records"]["records"], idc["bag_records"]["records"],
                                                ctx.workdir / "patient-cv-cache",
                                                any(step in ctx.done_now for step in ingest_steps)),
                                ingest_steps)
    tile_sigma = cv_tables.best_width(cv_tables.localisation_sweeps(idc["recipe_cv"]).get("tile", {}))
    if tile_sigma is not None:
        idc["evaluations"]["mil_tile_context"] = run_step(
            ctx, "idc-mil-tile-context",
            mil_tile_context_step(idc["runs"]["mil"]["models"]["mil"], idc["bag_records"]["records"],
                                  float(tile_sigma)),
            ["idc-mil", "idc-patient-cv"])


def package_versions() -> Dict[str, str]:
    """Installed versions of the packages the results depend on."""
    from importlib import metadata

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str:
    """The checkout's short commit hash, or "unknown"."""
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The command line of `python -m bench.results`."""
    parser = argparse.ArgumentParser(prog="python -m bench.results", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("HISTOPATH_SHARED_DATA",
                                                         str(REPO_ROOT.parent / "shared" / "data")))
    parser.add_argument("--workdir", default=str(DEFAULT_WORKDIR))
    parser.add_argument("--docs", default=str(DEFAULT_DOCS), help="where results/ (tables, figures, JSON) goes")
    parser.add_argument("--datasets", default="idc,breakhis", help="comma-separated: idc,breakhis")
    parser.add_argument("--redo", action="append", default=[], metavar="STEP", help="run this step again")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the tables from DOCS/results/results.json; run no step, keep the figures")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    """Runs the unfinished steps, then writes the report (`--report-only`: the tables only)."""
    args = parse_args(argv)
    docs = pathlib.Path(args.docs).resolve()
    if args.report_only:
        stored = json.loads((docs / report.RESULTS_FOLDER / "results.json").read_text())
        for path in report.write_tables(stored, docs / report.RESULTS_FOLDER):
            print(f"[results] wrote {path}")
        return 0
    import histopath  # noqa: F401  (Keras 2 before TensorFlow)
    from histopath.evaluation.patient_rules import PATIENT_LABEL_RULE, PATIENT_SCORE_RULE

    data = pathlib.Path(args.data).resolve()
    for folder in ("idc", "breakhis-200x-224"):
        if not (data / folder).is_dir():
            raise SystemExit(f"{data / folder} does not exist: give --data (the real data sets)")
    ctx = Context(data=data, workdir=pathlib.Path(args.workdir).resolve(), redo=set(args.redo))
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    started = time.perf_counter()
    results: Dict[str, Any] = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_name(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "packages": package_versions(),
        "data": str(data),
        "seed": SEED,
        "rules": {"score": PATIENT_SCORE_RULE, "label": PATIENT_LABEL_RULE},
        "targets": TARGETS,
    }
    if "idc" in datasets:
        results["idc"] = run_idc(ctx)
    if "breakhis" in datasets:
        results["breakhis"] = run_breakhis(ctx, results.get("idc"))
    if "idc" in results:
        run_idc_patient_cv(ctx, results["idc"])
    results["precision_speed"] = run_step(ctx, "precision-speed", precision_speed_step())
    results["commands"] = run_tables.collect_commands({k: results[k] for k in ("idc", "breakhis") if k in results})
    for path in report.write_report(ctx, results, docs, started):
        print(f"[results] wrote {path}")
    return 0
