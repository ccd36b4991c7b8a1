"""Per-step throughput of the Trainer on 2 workers against 1, on loopback.

    python -m bench.multi_worker [--train 1024] [--per-replica-batch 16] [--epochs 4]
                                 [--output bench/results/multi_worker.json]

Runs `components.trainer.run_fn` (`tests.multi_worker_cluster`: a real Transform output of
synthetic tissue images, the plain CNN) once in one process and once in two worker
processes under `MultiWorkerMirroredStrategy`, both at the same global batch (the one
worker's batch is twice the per-replica batch). The throughput is the training examples of
an epoch over its training-pass wall time (`model_info.json`'s history), on the epochs
after the first (which includes tracing and the workers' first collective).

Both workers run on this machine: on 2 cores they share the CPUs the single worker had to
itself, and every step adds a gradient all-reduce over gRPC, so the ratio measures the
strategy's overhead, not a speed-up (docs/kubeflow.md, "Training across workers").
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import tempfile
import time
from typing import Any, Optional, Sequence

from bench.common import cpu_name, write_json

DEFAULT_OUTPUT = pathlib.Path(__file__).parent / "results" / "multi_worker.json"


def _run(data: dict, workers: int, per_replica: int, epochs: int, conv_layers: int, base_filters: int,
         out: str) -> dict[str, Any]:
    from tests import multi_worker_cluster as cluster

    started = time.time()
    runs = cluster.run_trainers(data, cluster.candidate_settings(
        per_replica if workers > 1 else 2 * per_replica, epochs=epochs, conv_layers=conv_layers,
        base_filters=base_filters), os.path.join(out, f"workers{workers}"), workers, timeout=3600, nice=0)
    wall = time.time() - started
    with open(os.path.join(runs[0]["serving"], "assets.extra", "model_info.json")) as handle:
        info = json.load(handle)
    history = info["history"]
    seconds, examples = history["epoch_seconds"][1:], history["train_examples"][1:]
    batch = info["training_config"]["batch_size"]
    steps = sum(-(-count // batch) for count in examples)
    return {"workers": workers, "global_batch": batch, "per_replica_batch": batch // max(workers, 1),
            "epochs_timed": len(seconds), "steps_timed": steps, "train_seconds_timed": round(sum(seconds), 3),
            "seconds_per_step": round(sum(seconds) / steps, 5),
            "examples_per_second": round(sum(examples) / sum(seconds), 2),
            "first_epoch_seconds": history["epoch_seconds"][0], "process_wall_seconds": round(wall, 1),
            "distribution": info.get("distribution")}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=1024, help="training examples")
    parser.add_argument("--per-replica-batch", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--conv-layers", type=int, default=6)
    parser.add_argument("--base-filters", type=int, default=32)
    parser.add_argument("--output", type=pathlib.Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    from tests import multi_worker_cluster as cluster

    with tempfile.TemporaryDirectory(prefix="bench-multi-worker-") as out:
        load_before = os.getloadavg()
        data = cluster.write_transformed_examples(out, train=args.train, eval_=64)
        runs = {str(workers): _run(data, workers, args.per_replica_batch, args.epochs, args.conv_layers,
                                   args.base_filters, out) for workers in (1, 2)}
        load_after = os.getloadavg()
    ratio = runs["2"]["examples_per_second"] / runs["1"]["examples_per_second"]
    result = {
        "what": "Trainer run_fn, plain CNN on synthetic 16x16 tissue images, 2 workers "
                "(MultiWorkerMirroredStrategy on 127.0.0.1) vs 1, same global batch",
        "ratio_2_over_1_examples_per_second": round(ratio, 3),
        "runs": runs,
        "settings": {"train_examples": args.train, "per_replica_batch": args.per_replica_batch,
                     "epochs": args.epochs, "conv_layers": args.conv_layers, "base_filters": args.base_filters},
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "load_average_1_5_15_before": [round(v, 2) for v in load_before],
                    "load_average_1_5_15_after": [round(v, 2) for v in load_after]},
        "note": "both workers share this machine's cores: the ratio is the strategy's overhead, not a speed-up",
    }
    write_json(args.output, result)
    print(json.dumps({"ratio_2_over_1": result["ratio_2_over_1_examples_per_second"],
                      "1": runs["1"]["examples_per_second"], "2": runs["2"]["examples_per_second"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
