"""Training and inference throughput of both classifiers, float32 vs mixed bfloat16.

    python -m bench.models [--output-json FILE] [--batch-size 8] [--steps 3]

Each (model, precision) setting runs in its own subprocess (clean Keras policy, honest
peak memory): build the model at its default input size, trace and warm up, then time
`--steps` training steps (DenseNet: the fine-tuning phase, top `fine_tune_blocks`
unfrozen) and `--steps` inference batches. Results (images/s, trace seconds, peak RSS,
and bfloat16/float32 ratios) go to bench/results/models.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import time
from typing import Dict, List

from bench.common import write_json

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "models.json")
SETTINGS = [(model, precision) for model in ("densenet", "mil") for precision in ("float32", "mixed_bfloat16")]


def _measure(model_kind: str, precision: str, batch_size: int, steps: int) -> Dict[str, float]:
    """Runs one setting in this process and returns its figures."""
    import histopath  # noqa: F401  (pins Keras 2 before TensorFlow is imported)
    import numpy as np
    import tensorflow as tf

    from histopath.models import densenet, mil, config as model_config, training
    from tests import synthetic_images

    policy = None if precision == "float32" else precision
    started = time.perf_counter()
    if model_kind == "densenet":
        config = model_config.DenseNetConfig(mixed_precision=policy)
        model = densenet.build_densenet_model(config)
        densenet.set_backbone_trainable(model, config.fine_tune_blocks, config.freeze_batchnorm)
        learning_rate, size, multi_output = config.fine_tune_learning_rate, config.image_size, False
    else:
        config = model_config.MilConfig(mixed_precision=policy)
        model = mil.build_mil_model(config)
        learning_rate, size, multi_output = config.learning_rate, config.image_size, True
    build_seconds = time.perf_counter() - started
    training.compile_model(model, learning_rate, multi_output)  # the loss/metrics train_model uses

    images, labels = synthetic_images.image_dataset(batch_size, size, seed=0)
    images = tf.constant(images)
    targets = {"probability": labels[:, None].astype(np.float32)} if multi_output else labels[:, None].astype(np.float32)

    started = time.perf_counter()
    model.train_on_batch(images, targets)
    train_trace_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(images, targets)
    train_seconds = time.perf_counter() - started

    predict = tf.function(lambda x: model(x, training=False))
    started = time.perf_counter()
    tf.nest.map_structure(lambda t: t.numpy(), predict(images))
    infer_trace_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        tf.nest.map_structure(lambda t: t.numpy(), predict(images))
    infer_seconds = time.perf_counter() - started

    return {
        "image_size": size,
        "trainable_weights": len(model.trainable_weights),
        "build_seconds": round(build_seconds, 2),
        "train_trace_seconds": round(train_trace_seconds, 2),
        "infer_trace_seconds": round(infer_trace_seconds, 2),
        "train_images_per_second": round(batch_size * steps / train_seconds, 3),
        "infer_images_per_second": round(batch_size * steps / infer_seconds, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-json", default=RESULTS, help=f"results file (default {RESULTS})")
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch (default 8)")
    parser.add_argument("--steps", type=int, default=3, help="timed batches per setting after warm-up (default 3)")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(_measure(args.worker[0], args.worker[1], args.batch_size, args.steps)))
        return 0

    results: Dict[str, Dict[str, Dict[str, float]]] = {}
    for model_kind, precision in SETTINGS:
        print(f"[bench.models] {model_kind} {precision} ...", flush=True)
        completed = subprocess.run(
            [sys.executable, "-m", "bench.models", "--worker", model_kind, precision,
             "--batch-size", str(args.batch_size), "--steps", str(args.steps)],
            capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            print(completed.stderr[-3000:], file=sys.stderr)
            return completed.returncode
        figures = json.loads(completed.stdout.strip().splitlines()[-1])
        results.setdefault(model_kind, {})[precision] = figures
        print(f"  {json.dumps(figures)}", flush=True)

    ratios = {
        model_kind: {
            f"{key}_bf16_over_fp32": round(by_precision["mixed_bfloat16"][key] / by_precision["float32"][key], 3)
            for key in ("train_images_per_second", "infer_images_per_second")
        }
        for model_kind, by_precision in results.items()
    }
    cpu_flags = ""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as handle:
            cpu_flags = next((line for line in handle if line.startswith("flags")), "")
    report = {
        "benchmark": "models",
        "batch_size": args.batch_size,
        "timed_steps": args.steps,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "amx": "amx_tile" in cpu_flags, "avx512_bf16": "avx512_bf16" in cpu_flags,
                    "load_average_at_end": os.getloadavg()},
        "results": results,
        "ratios": ratios,
    }
    write_json(pathlib.Path(args.output_json), report)
    print(json.dumps(ratios, indent=2))
    print(f"[bench.models] wrote {args.output_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
