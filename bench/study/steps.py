"""The steps of the real-data study and their cache: each step runs once and keeps its
result in WORKDIR/<step>/result.json.

A step factory (`ingest_step`, `pipeline_step`, ...) returns the work of one step, a
function of the step's folder returning its JSON-ready result; `run_step` runs it unless
a finished result is stored, and records wall time and peak memory. Steps that run a CLI
keep the command in their result (`"command"`), which the report lists for reproducing.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib
import shutil
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from bench.common import TreeRssSampler, latest_artifact_dir, write_json

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "bench" / "configs"
SEED = 42
IDC_BAG_SIZE = 4
BOOTSTRAP_RESAMPLES = 1000
# AugmentConfig fields of the colour augmentation the baselines share with the models.
COLOUR_AUGMENTATION = ("color_jitter", "color_space", "stain_scale", "stain_shift", "brightness", "contrast")

StepWork = Callable[[pathlib.Path], Dict[str, Any]]


@dataclasses.dataclass
class Context:
    """Where the inputs are and where the steps write."""

    data: pathlib.Path  # the real data sets: idc/, breakhis-200x-224/
    workdir: pathlib.Path  # one folder per step
    redo: set  # steps to run again even when finished
    done_now: set = dataclasses.field(default_factory=set)  # steps (re-)run in this invocation

    def step_dir(self, name: str) -> pathlib.Path:
        """The folder of step `name` (its result.json, logs and outputs)."""
        return self.workdir / name


def bench_config(name: str) -> Dict[str, Any]:
    """A config of bench/configs/ (e.g. "idc_densenet.json") merged over the product preset
    it names: the study trains the presets users get, with only its own settings on top
    (lenient thresholds, in-memory Beam, its own model names)."""
    from histopath.pipeline import presets
    from histopath.pipeline.config import merge

    values = json.loads((CONFIGS / name).read_text())
    preset = values.get("preset")
    return merge(presets.layer(preset), values) if preset else values


def stain_normalised(config_name: str) -> bool:
    """Whether a bench config turns on the Transform's stain normalisation."""
    return bool(bench_config(config_name).get("stain_normalization", False))


def model_info(model_dir: str | pathlib.Path) -> Dict[str, Any]:
    """The `model_info.json` an exported model carries (threshold, history, slide context)."""
    return json.loads((pathlib.Path(model_dir) / "assets.extra" / "model_info.json").read_text())


def histopath_command() -> List[str]:
    """The CLI of this checkout's venv (falls back to `python -m histopath.cli`)."""
    script = pathlib.Path(sys.executable).with_name("histopath")
    return [str(script)] if script.exists() else [sys.executable, "-m", "histopath.cli"]


def run_step(ctx: Context, name: str, work: StepWork, depends_on: Sequence[str] = ()) -> Dict[str, Any]:
    """Runs `work(step_dir)` unless its result is stored; records wall time and peak memory.

    Args:
      ctx: the study's folders and which steps to redo.
      name: the step's name (its folder under `ctx.workdir`).
      work: the step's work (from a step factory).
      depends_on: steps whose re-run in this invocation makes this one stale.

    Returns:
      The step's result, with "step", "wall_seconds", "peak_memory_mib",
      "peak_memory_scope" and "finished" added.
    """
    folder = ctx.step_dir(name)
    result_path = folder / "result.json"
    stale = name in ctx.redo or any(dep in ctx.done_now for dep in depends_on)
    if result_path.is_file() and not stale:
        print(f"[results] {name}: done before ({result_path})", flush=True)
        return json.loads(result_path.read_text())
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    print(f"[results] {name}: running ...", flush=True)
    started = time.perf_counter()
    with TreeRssSampler(interval=1.0) as memory:
        result = work(folder)
    result["step"] = name
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    peaks = memory.as_dict()
    # A step that ran a command is charged its command's processes only; an in-process
    # step the whole tree (this generator included).
    result["peak_memory_mib"] = peaks["peak_children_mib"] if "command" in result else peaks["peak_mib"]
    result["peak_memory_scope"] = "command processes" if "command" in result else "generator process tree"
    result["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    write_json(result_path, result)
    ctx.done_now.add(name)
    print(f"[results] {name}: {result['wall_seconds']:.0f} s, peak {result['peak_memory_mib']:.0f} MiB", flush=True)
    return result


def run_command(command: List[str], log_path: pathlib.Path, ok_codes: Sequence[int] = (0,)) -> int:
    """Runs a CLI command with its output in `log_path`; raises on an unexpected exit code."""
    print(f"[results]   $ {' '.join(command)}", flush=True)
    with open(log_path, "w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    if code not in ok_codes:
        tail = log_path.read_text().splitlines()[-15:]
        raise SystemExit(f"command failed with exit code {code}: {' '.join(command)}\n" + "\n".join(tail))
    return code


def _scored_test(test: Dict[str, Any], threshold: float) -> Dict[str, Any]:
    """Image- and patient-level scores of a baseline's test predictions at its threshold."""
    from histopath.evaluation import scoring

    return scoring.score_predictions(test["labels"], test["scores"], test["predictions"], test["patient_ids"],
                                     threshold=threshold, bootstrap=BOOTSTRAP_RESAMPLES, seed=0)


# --- step factories ---------------------------------------------------------------------

def ingest_step(dataset: str, source: pathlib.Path, bag_size: Optional[int] = None) -> StepWork:
    """`histopath ingest` of a data set (region bags of `bag_size` patches when given)."""
    def work(folder: pathlib.Path) -> Dict[str, Any]:
        records = folder / "records"
        command = histopath_command() + ["ingest", "--dataset", dataset, "--source", str(source),
                                         "--output", str(records), "--seed", str(SEED)]
        if bag_size:
            command += ["--bag-size", str(bag_size)]
        run_command(command, folder / "log.txt")
        manifest = json.loads((records / "manifest.json").read_text())
        return {"command": command, "records": str(records), "splits": {
            split: {"patients": info["patient_ids"], "num_examples": info["num_examples"],
                    "label_counts": info["label_counts"]}
            for split, info in manifest["splits"].items()}, "skipped": manifest["num_skipped"]}
    return work


def pipeline_step(dataset: str, records: str, config_name: str,
                  config_changes: Optional[Dict[str, Any]] = None) -> StepWork:
    """`histopath run` with a bench config; `config_changes` maps "section.field" (or a
    top-level key) to the value that replaces the config's."""
    def work(folder: pathlib.Path) -> Dict[str, Any]:
        config = bench_config(config_name)
        for key, value in (config_changes or {}).items():
            section, _, field = key.partition(".")
            if field:
                config.setdefault(section, {})[field] = value
            else:
                config[key] = value
        config_path = folder / "config.json"
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        run_dir = folder / "run"
        command = histopath_command() + ["run", "--dataset", dataset, "--data", records,
                                         "--output", str(run_dir), "--config", str(config_path)]
        code = run_command(command, folder / "log.txt", ok_codes=(0, 3))  # 3: nothing blessed
        models, trainers = {}, {}
        for kind in config["models"]:
            trainer_models = run_dir / "pipeline_root" / f"trainer_{kind}" / "model" / "*"
            model_dir = latest_artifact_dir(trainer_models) / "Format-Serving"
            models[kind] = str(model_dir)
            info = model_info(model_dir)
            trainers[kind] = {"train_seconds": info.get("train_seconds"), "history": info["history"],
                              "decision_threshold": info.get("decision_threshold"),
                              "test_time_augmentation": info.get("test_time_augmentation", False),
                              "eval_split": info.get("eval_split")}
        report = json.loads((run_dir / "report" / "report.json").read_text())
        return {"command": command, "config": config, "exit_code": code, "run_dir": str(run_dir),
                "models": models, "trainers": trainers, "pipeline_report": report,
                "components": component_seconds(run_dir / "metadata.sqlite")}
    return work


def component_seconds(metadata: pathlib.Path) -> List[Dict[str, Any]]:
    """Wall seconds and final state of every component execution of a pipeline run."""
    from histopath.pipeline import runs

    return [{"component": e.component_id, "state": e.state, "seconds": round(e.seconds, 1)}
            for e in runs.component_executions(metadata)]


def evaluate_step(model_dir: str, dataset: str, raw_data: pathlib.Path, records: str) -> StepWork:
    """`histopath evaluate` of an exported model on the test patients of a records manifest."""
    def work(folder: pathlib.Path) -> Dict[str, Any]:
        output = folder / "evaluation.json"
        command = histopath_command() + ["evaluate", "--model", model_dir, "--data", str(raw_data),
                                         "--dataset", dataset, "--split-manifest",
                                         str(pathlib.Path(records) / "manifest.json"), "--split", "test",
                                         "--output", str(output)]
        run_command(command, folder / "log.txt")
        return {"command": command, **compact_evaluation(json.loads(output.read_text())),
                "plots": {"roc": str(folder / "evaluation.roc.png"),
                          "calibration": str(folder / "evaluation.calibration.png")}}
    return work


def compact_evaluation(result: Dict[str, Any]) -> Dict[str, Any]:
    """The parts of an evaluation the report needs (no per-image rows)."""
    keep = ("decision_threshold", "patient_label_rule", "patient_score_rule", "bootstrap", "image_level",
            "patient_level", "patients", "slide_context", "tumour_fraction")
    return {key: result[key] for key in keep if key in result}


def mil_regions_step(model_dir: str, bag_records: str) -> StepWork:
    """The MIL scored on the test regions: classification (alone and with slide context),
    attention localisation, the instance classifier's localisation, and slide heat-maps."""
    def work(folder: pathlib.Path) -> Dict[str, Any]:
        from bench import localisation_scoring, mil_localisation, region_bags
        from histopath.evaluation import scoring

        bags = region_bags.predict_bags(model_dir, bag_records, "test")
        info = model_info(model_dir)
        threshold = float(info["decision_threshold"])
        patients = [str(p) for p in bags["patient_id"]]
        scored = scoring.score_predictions(
            bags["label"], bags["probability"], bags["predicted_label"], patients,
            threshold=threshold, bootstrap=BOOTSTRAP_RESAMPLES, seed=0)
        context = scoring.slide_context_evaluation(  # regions averaged over their neighbouring regions
            info.get("slide_context"), bags["label"], bags["probability"], patients, bags["origin_x"],
            bags["origin_y"], bootstrap=BOOTSTRAP_RESAMPLES, seed=0)
        if context is not None:
            scored["slide_context"] = context.report
        localisation = localisation_scoring.localisation_scores(bags, bootstrap=BOOTSTRAP_RESAMPLES, seed=0)
        drawn = ("attention", "tile_probability") if "tile_probability" in bags else ("attention",)
        heatmaps = mil_localisation.slide_heatmaps(bags, bag_records, "test", folder / "heatmaps", scores=drawn)
        result = {"decision_threshold": threshold, "unit": f"region of {IDC_BAG_SIZE}x{IDC_BAG_SIZE} patches",
                  **scored, "localisation": localisation_scoring.json_ready(localisation),
                  "heatmaps": [str(p) for p in heatmaps["attention"]]}
        if "tile_probability" in bags:  # the instance classifier's ranking, scored the same way
            result["tile_localisation"] = localisation_scoring.json_ready(localisation_scoring.localisation_scores(
                {**bags, "attention": bags["tile_probability"]}, bootstrap=BOOTSTRAP_RESAMPLES, seed=0))
            result["tile_heatmaps"] = [str(p) for p in heatmaps["tile_probability"]]
        return result
    return work


def patch_localisation_step(evaluation_json: pathlib.Path) -> StepWork:
    """How a patch model trained WITH patch labels (its `histopath evaluate` probabilities,
    alone and with slide context) ranks the IDC-positive patches inside the test regions
    the MIL is scored on: the test-split reference for the MIL's localisation."""
    def work(folder: pathlib.Path) -> Dict[str, Any]:
        from bench import localisation_scoring, region_bags
        from histopath.data.layouts import idc_patch_position

        images = json.loads(evaluation_json.read_text())["images"]
        positions = [idc_patch_position(row["path"]) for row in images]
        result = {"evaluation": str(evaluation_json)}
        for name, key in (("alone", "probability"), ("slide_context", "context_probability")):
            if all(key in row for row in images):
                bags = region_bags.patches_as_bags(
                    [row[key] for row in images], [row["label"] for row in images],
                    [row["patient_id"] for row in images], [x for _, x, _ in positions],
                    [y for _, _, y in positions], IDC_BAG_SIZE)
                result[name] = localisation_scoring.json_ready(
                    localisation_scoring.localisation_scores(bags, bootstrap=BOOTSTRAP_RESAMPLES, seed=0))
        return result
    return work


def mil_tile_context_step(model_dir: str, bag_records: str, sigma: float) -> StepWork:
    """The MIL instance classifier's tile probabilities with slide context (`sigma` tile
    widths, chosen by the patient CV) scored as localisation on the test regions."""
    def work(folder: pathlib.Path) -> Dict[str, Any]:
        from bench import localisation_scoring, mil_localisation, region_bags

        bags = region_bags.predict_bags(model_dir, bag_records, "test")
        context = localisation_scoring.tile_slide_context(bags["tile_probability"], bags["patch_labels"],
                                                          bags["patient_id"], bags["origin_x"], bags["origin_y"],
                                                          sigma)
        scores = localisation_scoring.localisation_scores({**bags, "attention": context},
                                                          bootstrap=BOOTSTRAP_RESAMPLES, seed=0)
        heatmaps = mil_localisation.slide_heatmaps({**bags, "tile_context": context}, bag_records, "test",
                                                   folder / "heatmaps", scores=("tile_context",))
        return {"sigma": sigma, "localisation": localisation_scoring.json_ready(scores),
                "heatmaps": [str(p) for p in heatmaps["tile_context"]]}
    return work


def baseline_step(records: str, conv_layers: int, image_size: int, minutes: float,
                  colour_augmentation_from: Optional[str] = None,
                  stain_normalization: Optional[bool] = None) -> StepWork:
    """The plain-CNN baseline (bench/baseline_cnn.py) trained for `minutes` and scored.

    Args:
      records: the ingested patch records.
      conv_layers: convolutions of the plain CNN.
      image_size: its input side in pixels.
      minutes: its CPU training budget.
      colour_augmentation_from: a bench config whose colour augmentation (stain jitter,
        brightness, contrast) and stain normalisation the baseline shares with the
        pipeline's models, so that they are compared on the same input.
      stain_normalization: when not None, overrides the config's choice.
    """
    def work(folder: pathlib.Path) -> Dict[str, Any]:
        from bench import baseline_cnn
        from histopath.models.config import AugmentConfig

        augment, normalize = baseline_cnn.DEFAULT_AUGMENT, bool(stain_normalization)
        if colour_augmentation_from:
            pipeline_config = bench_config(colour_augmentation_from)
            shared = pipeline_config["training"]["augment"]
            colour = {key: shared[key] for key in COLOUR_AUGMENTATION if key in shared}
            augment = AugmentConfig.from_dict({**augment.to_dict(), **colour})
            if stain_normalization is None:
                normalize = bool(pipeline_config.get("stain_normalization", False))
        config = baseline_cnn.BaselineConfig(conv_layers=conv_layers, image_size=image_size, minutes=minutes,
                                             seed=SEED, augment=augment, stain_normalization=normalize)
        result = baseline_cnn.train_and_predict(records, config, output_dir=folder)
        scored = _scored_test(result.pop("test"), result["threshold"])
        return {"baseline": {k: v for k, v in result.items() if k != "history"},
                "decision_threshold": result["threshold"], **scored}
    return work


def baseline_context_step(records: str, baseline_folder: pathlib.Path, sigma: float) -> StepWork:
    """A finished baseline step's saved model scored with slide context (no retraining)."""
    def work(folder: pathlib.Path) -> Dict[str, Any]:
        from bench import baseline_cnn
        from histopath.models.config import AugmentConfig

        trained = json.loads((baseline_folder / "result.json").read_text())["baseline"]["config"]
        config = baseline_cnn.BaselineConfig(**{**trained, "augment": AugmentConfig.from_dict(trained["augment"])})
        result = baseline_cnn.slide_context_predictions(baseline_folder, records, config, sigma)
        scored = _scored_test(result.pop("test"), result["threshold"])
        return {"eval": result, "decision_threshold": result["threshold"], **scored}
    return work


def throughput_step(run_dir: str, kind: str, max_images: int) -> StepWork:
    """A Trainer's images/s against the model's own rate on in-memory tensors."""
    def work(folder: pathlib.Path) -> Dict[str, Any]:
        from bench.pipeline import compare_trainer

        return compare_trainer(kind, pathlib.Path(run_dir) / "pipeline_root", max_images=max_images,
                               bare_epochs=3)
    return work


def patient_cv_step(records: str, bag_records: str, cache: pathlib.Path, data_changed: bool) -> StepWork:
    """The patient CV; folds of unchanged recipes come from `cache` unless the data was re-ingested."""
    def work(folder: pathlib.Path) -> Dict[str, Any]:
        if data_changed and cache.exists():
            shutil.rmtree(cache)
        output = folder / "patient_cv.json"
        command = [sys.executable, "-m", "bench.patient_cv", "--records", records, "--bag-records", bag_records,
                   "--output", str(output), "--cache", str(cache)]
        run_command(command, folder / "log.txt")
        return {"command": command, **json.loads(output.read_text())}
    return work


def precision_speed_step() -> StepWork:
    """bench/models.py: train and inference images/s in float32 and mixed bfloat16."""
    def work(folder: pathlib.Path) -> Dict[str, Any]:
        output = folder / "models.json"
        command = [sys.executable, "-m", "bench.models", "--output-json", str(output)]
        run_command(command, folder / "log.txt")
        return {"command": command, "models": json.loads(output.read_text())}
    return work
