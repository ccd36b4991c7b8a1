"""Wall time of every component of the demo run, and the Trainer's throughput inside TFX.

    python -m bench.pipeline [--output-json FILE] [--workdir DIR]

1. Demo run, as scripts/demo.sh does it: the synthetic BreakHis sample
   (`histopath.data.sample.make_sample("breakhis", ...)`, default size), then the whole
   pipeline with the `demo` preset through `run_local` into a fresh output folder
   (nothing cached). Per-component wall times come from ML Metadata
   (`histopath.pipeline.runs.component_executions`); also total wall time and peak RSS
   (`resource.getrusage` of this process and of its waited-for children, plus a sampled
   peak of the summed RSS of the whole process tree, Beam workers included).
2. Trainer images/s inside TFX against a bare `model.fit`, per model, in one run. The
   Trainer records each epoch's training-pass seconds and examples in its history
   (`training._EpochTimer`), which reaches `assets.extra/model_info.json` of its output
   model. This process then reads the SAME transformed training examples (Transform's
   `Split-train`), decodes them with `preprocessing.transformed_to_model_input` (the
   Trainer's function) into in-memory tensors, builds the same model from the recorded
   `model_config`, compiles it with `training.compile_model`, and fits
   `Dataset.from_tensor_slices(...).batch(batch_size)` for the same number of epochs with
   no validation (same class weights as sample weights, so the train step is the same
   graph), twice:
   * bare: with the Trainer's own augmentation (`augment.augment_dataset`, same config) —
     the same training recipe, so `ratio = TFX images/s / bare images/s` (target >= 0.9)
     measures what running inside TFX costs: reading and parsing Transform's records and
     the tf.data plumbing around them;
   * model compute: no augmentation, no input work at all — the model's own rate;
     `ratio_tfx_over_model_compute` shows the share of everything else (augmentation
     included), and the input pipeline's throughput on its own (no model) is reported too.
   Steady state = the epochs after the first (which traces). DenseNet: the head phase
   (backbone frozen) is compared; its fine-tuning phase has its own, separately traced
   epochs (one in the demo, so no steady state there).

Results: table on stdout, JSON (default bench/results/pipeline.json, written then
renamed) and a bar plot of the component wall times next to it (same name, .png).
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import logging
import os
import pathlib
import platform
import resource
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

import histopath  # noqa: F401  (pins Keras 2 before TensorFlow is imported)
from bench.common import TreeRssSampler, latest_artifact_dir, save_figure, write_json

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "bench" / "results" / "pipeline.json"
TARGET_RATIO = 0.9
# The phase whose steady-state epochs are compared, per model kind.
COMPARED_PHASE = {"densenet": "head", "mil": "train"}


def _peak_rss_mib() -> Dict[str, float]:
    """getrusage peaks: this process, and the largest waited-for child.

    The children figure is inflated on Linux (a forked+exec'd child inherits this
    process's high-water RSS), so `TreeRssSampler` gives the process tree's real peak.
    """
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"self": round(own, 1), "children_max": round(children, 1), "self_plus_children": round(own + children, 1)}


def _load_average() -> List[float]:
    return [round(value, 2) for value in os.getloadavg()]


def _steady_rate(epoch_seconds: List[float], examples: List[int]) -> Tuple[Optional[float], int, str]:
    """images/s over the epochs after the first; (rate, epochs used, note)."""
    if len(epoch_seconds) < 2:
        return None, 0, "only one epoch in this phase: no steady state (the epoch includes tracing)"
    seconds, images = sum(epoch_seconds[1:]), sum(examples[1:])
    return images / seconds, len(epoch_seconds) - 1, ""


def run_demo(workdir: pathlib.Path, reuse_run: bool = False) -> Dict[str, Any]:
    """Generates the demo sample and runs the demo pipeline; returns timings and paths.

    Args:
      workdir: holds sample/ and run/.
      reuse_run: only read back an existing run/ (no new run; for re-doing part 2).
    """
    from histopath.data.sample import make_sample
    from histopath.errors import NotBlessedError
    from histopath.pipeline import runs
    from histopath.pipeline import presets
    from histopath.pipeline.config import PipelineConfig
    from histopath.pipeline.local_runner import run_local

    sample_dir, run_dir = workdir / "sample", workdir / "run"
    if run_dir.exists() and not reuse_run:
        raise SystemExit(f"{run_dir} already exists: give an empty --workdir so nothing is cached")
    started = time.perf_counter()
    if not sample_dir.exists():
        make_sample("breakhis", str(sample_dir))  # demo.sh: `histopath make-sample --dataset breakhis`
    sample_seconds = time.perf_counter() - started

    values = presets.layer("demo")  # what `make demo` runs
    values.update({"dataset": "breakhis", "data_dir": str(sample_dir), "output_dir": str(run_dir)})
    config = PipelineConfig.from_dict(values).validate()
    print(f"[bench.pipeline] running the demo pipeline into {run_dir} ...", flush=True)
    started = time.perf_counter()
    pushed, error = True, None
    with TreeRssSampler() as tree_rss:
        try:
            if not reuse_run:
                run_local(config)
        except NotBlessedError as exc:  # timings are still valid; say so in the results
            pushed, error = False, str(exc)
    pipeline_seconds = time.perf_counter() - started
    rss = _peak_rss_mib()
    executions = runs.component_executions(config.metadata_path)
    return {
        "config": config,
        "sample_seconds": round(sample_seconds, 2),
        "pipeline_seconds": round(pipeline_seconds, 2),
        "pushed": pushed,
        "not_blessed_error": error,
        "peak_rss_mib_after_pipeline": rss,
        # children_max is inflated (see TreeRssSampler); this is the process tree's peak.
        "peak_rss_tree_during_pipeline": tree_rss.as_dict(),
        "components": [
            {"component": e.component_id, "state": e.state, "seconds": round(e.seconds, 2)} for e in executions
        ],
    }


def _transformed_train_tensors(pipeline_root: pathlib.Path, transform_size: int, model_size: int):
    """Transform's training examples, decoded by the Trainer's own reader (`datasets.make_dataset`)."""
    import tensorflow as tf
    import tensorflow_transform as tft

    from histopath.models import datasets

    graph_dir = latest_artifact_dir(str(pipeline_root / "Transform" / "transform_graph" / "*"))
    examples_dir = latest_artifact_dir(str(pipeline_root / "Transform" / "transformed_examples" / "*"))
    files = sorted(glob.glob(str(examples_dir / "Split-train" / "*")))
    dataset = datasets.make_dataset(files, tft.TFTransformOutput(str(graph_dir)), batch_size=256,
                                   transform_size=transform_size, model_size=model_size, shuffle=False, seed=0,
                                   cache=False)
    batches = list(dataset)
    images = tf.concat([images for images, _ in batches], 0)
    labels = tf.concat([labels for _, labels in batches], 0)
    return images, labels, files


def _input_pipeline_rate(files: List[str], spec_dir: pathlib.Path, info: Dict[str, Any], weights) -> float:
    """images/s of the Trainer's own input pipeline alone (`datasets.make_dataset`, class
    weights, augmentation), steady state: after one warm-up pass that fills its cache, on one
    iterator over the repeated data as in `training.train_model`."""
    import tensorflow as tf
    import tensorflow_transform as tft

    from histopath.models import augment, config as model_config, datasets, registry, training

    config = model_config.TrainingConfig.from_dict(info["training_config"])
    dataset = datasets.make_dataset(
        files, tft.TFTransformOutput(str(spec_dir)), batch_size=config.batch_size,
        transform_size=int(info["transform_size"]), model_size=int(info["model_config"]["image_size"]),
        shuffle=True, seed=config.seed, cache=config.cache_examples)
    _, batches_per_pass = training.count_labels_and_batches(dataset)
    dataset = training.prepare_dataset(dataset.repeat(), weights, registry.get(info["model_kind"]).tiles)
    dataset = augment.augment_dataset(dataset, config.augment, config.seed).prefetch(tf.data.AUTOTUNE)
    iterator = iter(dataset)
    for _ in range(batches_per_pass):  # warm-up pass (traces the map functions, fills the cache)
        next(iterator)
    count, started = 0, time.perf_counter()
    for _ in range(max(3 * batches_per_pass, 30)):
        count += int(next(iterator)[0].shape[0])
    return count / (time.perf_counter() - started)


def compare_trainer(kind: str, pipeline_root: pathlib.Path, max_images: Optional[int] = None,
                    bare_epochs: Optional[int] = None) -> Dict[str, Any]:
    """TFX Trainer images/s (from its model_info) against a bare `model.fit` of the same model.

    Args:
      kind: "densenet" or "mil".
      pipeline_root: the run's pipeline root (holds Transform's and the Trainer's outputs).
      max_images: fit the bare model on the first N training images only (large data
        sets; the rate is per image, so it does not depend on N once the epochs are long).
      bare_epochs: epochs of the bare fit (default: as many as the Trainer's phase ran;
        the first one traces and is left out of the rate).
    """
    import numpy as np
    import tf_keras as keras
    import tensorflow as tf

    from histopath.models import augment, densenet, mil, config as model_config, training

    model_dir = latest_artifact_dir(str(pipeline_root / f"trainer_{kind}" / "model" / "*"))
    info_path = model_dir / "Format-Serving" / "assets.extra" / "model_info.json"
    info = json.loads(info_path.read_text())
    history = info["history"]
    if "epoch_seconds" not in history:
        raise SystemExit(f"{info_path} has no epoch_seconds: the Trainer ran without training._EpochTimer")
    phase = COMPARED_PHASE[kind]
    if phase not in history["phase"]:  # e.g. a DenseNet trained from scratch skips its head phase
        phase = history["phase"][-1]
    rows = [i for i, p in enumerate(history["phase"]) if p == phase]
    tfx_seconds = [history["epoch_seconds"][i] for i in rows]
    tfx_examples = [history["train_examples"][i] for i in rows]
    tfx_rate, tfx_epochs, note = _steady_rate(tfx_seconds, tfx_examples)
    phases = {}
    for name in dict.fromkeys(history["phase"]):
        idx = [i for i, p in enumerate(history["phase"]) if p == name]
        seconds = [history["epoch_seconds"][i] for i in idx]
        rate, _, phase_note = _steady_rate(seconds, [history["train_examples"][i] for i in idx])
        phases[name] = {"epoch_seconds": seconds, "train_examples": [history["train_examples"][i] for i in idx],
                        "steady_images_per_second": None if rate is None else round(rate, 3), "note": phase_note}

    training_config = model_config.TrainingConfig.from_dict(info["training_config"])
    transform_size = int(info["transform_size"])
    if kind == "densenet":
        config = model_config.DenseNetConfig.from_dict(info["model_config"])
        build = densenet.build_densenet_model
        learning_rate = config.head_learning_rate if phase == "head" else config.fine_tune_learning_rate
    else:
        config = model_config.MilConfig.from_dict(info["model_config"])
        build, learning_rate = mil.build_mil_model, config.learning_rate
    images, labels, files = _transformed_train_tensors(pipeline_root, transform_size, int(config.image_size))
    if max_images is not None:
        images, labels = images[:max_images], labels[:max_images]
    n_images = int(images.shape[0])

    label_array = labels.numpy()
    weights = None
    if training_config.class_weights:
        weights = training.class_weights_from_counts(
            {0: int((label_array == 0).sum()), 1: int((label_array == 1).sum())})
    epochs = bare_epochs or max(len(tfx_seconds), 2)

    def bare_fit_rate(augment_config: Optional[model_config.AugmentConfig]) -> Tuple[Optional[float], List[float]]:
        """Steady images/s of a fresh model fitted on the in-memory tensors."""
        keras.utils.set_random_seed(training_config.seed)
        model = build(config)
        if kind == "densenet" and phase == "head":
            densenet.set_backbone_trainable(model, 0)  # phase 1: head only, as train_model does
        elif kind == "densenet":
            densenet.set_backbone_trainable(model, config.fine_tune_blocks, config.freeze_batchnorm)
        multi_output = isinstance(model.output, dict)
        # The Trainer's optimizer (with its weight averaging), loss and metrics.
        training.compile_model(model, learning_rate, multi_output, training_config.weight_averaging)
        targets = label_array.reshape(-1, 1).astype(np.float32)
        tensors: Tuple[Any, ...] = (images, {training.PROBABILITY: targets} if multi_output else targets)
        if weights is not None:
            sample_weights = np.asarray(weights, np.float32)[label_array.astype(np.int64)]
            tensors += ({training.PROBABILITY: sample_weights} if multi_output else sample_weights,)
        dataset = tf.data.Dataset.from_tensor_slices(tensors).batch(training_config.batch_size)
        if augment_config is not None:
            dataset = augment.augment_dataset(dataset, augment_config, training_config.seed)
        timer = training._EpochTimer(n_images)
        what = "with the Trainer's augmentation" if augment_config is not None else "without augmentation"
        print(f"[bench.pipeline] bare model.fit of {kind} {what}: {n_images} images, {epochs} epochs ...",
              flush=True)
        model.fit(dataset.prefetch(tf.data.AUTOTUNE), epochs=epochs, callbacks=[timer], verbose=0)
        rate, _, _ = _steady_rate(timer.epoch_seconds, timer.train_examples)
        return rate, timer.epoch_seconds

    # Same training recipe as the Trainer (its augmentation on the same decoded tensors):
    # what the TFX Trainer adds on top is reading, parsing and its tf.data plumbing.
    bare_rate, bare_seconds = bare_fit_rate(training_config.augment if training_config.augment.enabled else None)
    # The model's own compute rate: no augmentation, no input work at all.
    compute_rate, compute_seconds = bare_fit_rate(None)

    graph_dir = latest_artifact_dir(str(pipeline_root / "Transform" / "transform_graph" / "*"))
    input_rate = _input_pipeline_rate(files, graph_dir, info, weights)
    ratio = None if tfx_rate is None or bare_rate is None else tfx_rate / bare_rate
    compute_ratio = None if tfx_rate is None or compute_rate is None else tfx_rate / compute_rate
    # On a shared 2-core CPU the input pipeline and the train step compete for the same
    # cores, so their times add: 1/tfx ≈ 1/compute + 1/input (upper bound of the input's share).
    predicted = None if compute_rate is None else 1.0 / (1.0 / compute_rate + 1.0 / input_rate)
    return {
        "model_kind": kind,
        "compared_phase": phase,
        "model_info": str(info_path),
        "train_images": n_images,
        "batch_size": training_config.batch_size,
        "epochs_compared": tfx_epochs,
        "tfx_epoch_seconds": tfx_seconds,
        "tfx_train_examples": tfx_examples,
        "tfx_images_per_second": None if tfx_rate is None else round(tfx_rate, 3),
        "bare_epoch_seconds": bare_seconds,
        "bare_images_per_second": None if bare_rate is None else round(bare_rate, 3),
        "ratio_tfx_over_bare": None if ratio is None else round(ratio, 3),
        "meets_target": None if ratio is None else ratio >= TARGET_RATIO,
        "bare_augmentation": training_config.augment.to_dict() if training_config.augment.enabled else None,
        "model_compute_epoch_seconds": compute_seconds,
        "model_compute_images_per_second": None if compute_rate is None else round(compute_rate, 3),
        "ratio_tfx_over_model_compute": None if compute_ratio is None else round(compute_ratio, 3),
        "input_pipeline_only_images_per_second": round(input_rate, 1),
        "predicted_tfx_if_input_and_step_serialize": None if predicted is None else round(predicted, 3),
        "trainer_train_seconds": info.get("train_seconds"),
        "phases": phases,
        "note": note,
    }


def _plot(path: pathlib.Path, components: List[Dict[str, Any]], total: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c["component"] for c in components][::-1]
    seconds = [c["seconds"] for c in components][::-1]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) + 1.5))
    bars = ax.barh(names, seconds, color="#4c72b0")
    ax.bar_label(bars, labels=[f"{s:.1f}" for s in seconds], padding=3, fontsize=8)
    ax.set_xlabel("wall seconds (ML Metadata: execution created → last update)")
    ax.set_title(f"Demo pipeline: component wall time (whole run {total:.0f} s)")
    ax.set_xlim(0, max(seconds) * 1.15 if seconds else 1)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def _print_table(results: Dict[str, Any]) -> None:
    demo = results["demo_run"]
    print("\ncomponent                         state       seconds")
    for c in demo["components"]:
        print(f"{c['component']:<33} {c['state']:<10} {c['seconds']:>8.1f}")
    print(f"{'sum of components':<44} {sum(c['seconds'] for c in demo['components']):>8.1f}")
    print(f"{'run_local wall time':<44} {demo['pipeline_seconds']:>8.1f}")
    print(f"{'sample generation':<44} {demo['sample_seconds']:>8.1f}")
    print(f"{'total (sample + pipeline)':<44} {demo['total_seconds']:>8.1f}")
    print(f"peak RSS MiB of this process: {demo['peak_rss_mib_after_pipeline']['self']}; "
          f"of the process tree (sum, sampled): {demo['peak_rss_tree_during_pipeline']['peak_mib']}")
    print("\nmodel     phase      epochs  TFX img/s  bare img/s  ratio  compute img/s  ratio  input-only img/s")
    for row in results["trainer_throughput"].values():
        def fmt(v, spec):
            return format(v, spec) if v is not None else "-"
        print(f"{row['model_kind']:<9} {row['compared_phase']:<10} {row['epochs_compared']:>6}  "
              f"{fmt(row['tfx_images_per_second'], '9.2f')}  {fmt(row['bare_images_per_second'], '10.2f')}  "
              f"{fmt(row['ratio_tfx_over_bare'], '5.2f')}  {fmt(row['model_compute_images_per_second'], '13.2f')}  "
              f"{fmt(row['ratio_tfx_over_model_compute'], '5.2f')}  {row['input_pipeline_only_images_per_second']:>16.1f}")
        if row["note"]:
            print(f"  note: {row['note']}")
    print(f"\nload average start {results['load_average_start']}  end {results['load_average_end']}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-json", default=str(RESULTS), help=f"results file (default {RESULTS})")
    parser.add_argument("--workdir", default=None,
                        help="folder for the sample and the run (default: a new temporary folder); "
                        "its run/ subfolder must not exist yet")
    parser.add_argument("--reuse-run", action="store_true", help=argparse.SUPPRESS)  # debugging part 2
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("histopath").setLevel(logging.INFO)

    load_start = _load_average()
    started = time.perf_counter()
    workdir = pathlib.Path(args.workdir).resolve() if args.workdir else pathlib.Path(
        tempfile.mkdtemp(prefix="bench-pipeline-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"[bench.pipeline] workdir {workdir}; load average {load_start}", flush=True)

    demo = run_demo(workdir, reuse_run=args.reuse_run)
    demo["reused_existing_run"] = args.reuse_run
    config = demo.pop("config")
    demo["total_seconds"] = round(demo["sample_seconds"] + demo["pipeline_seconds"], 2)
    throughput = {kind: compare_trainer(kind, config.pipeline_root) for kind in config.models}

    results = {
        "benchmark": "pipeline",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "workdir": str(workdir),
        "demo_config": presets.layer("demo"),
        "target_ratio": TARGET_RATIO,
        "demo_run": demo,
        "trainer_throughput": throughput,
        "peak_rss_mib_end": _peak_rss_mib(),
        "bench_seconds": round(time.perf_counter() - started, 1),
        "load_average_start": load_start,
        "load_average_end": _load_average(),
    }
    output = pathlib.Path(args.output_json)
    write_json(output, results)
    _plot(output.with_suffix(".png"), demo["components"], demo["pipeline_seconds"])
    _print_table(results)
    print(f"\nwrote {output} and {output.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
