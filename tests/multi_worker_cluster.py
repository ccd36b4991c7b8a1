"""A multi-worker Trainer cluster on loopback, for the tests and `bench/multi_worker.py`.

`write_transformed_examples` makes a real Transform output (tf.Transform's own
`AnalyzeDataset` on the project's `preprocessing_fn`, then its transform graph applied to
synthetic tissue images) and `run_trainers` starts `components.trainer.run_fn` in one
process per worker, each with the `TF_CONFIG` a TFJob or Vertex would set, ports picked
free on 127.0.0.1:

    python -m tests.multi_worker_cluster RUN.json   # one Trainer process (what run_trainers starts)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from typing import Any, Mapping, Optional, Sequence

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRANSFORM_SIZE = 16
NO_AUGMENTATION = {"flips": False, "rotations": False, "color_jitter": 0.0, "stain_scale": 0.0,
                   "stain_shift": 0.0, "brightness": 0.0, "contrast": 0.0, "crop_fraction": 1.0}


def encoded_images(n: int, seed: int) -> tuple[list[bytes], np.ndarray]:
    """`n` synthetic tissue images as PNG bytes, and their 0/1 labels."""
    import tensorflow as tf

    from tests.synthetic_images import image_dataset

    images, labels = image_dataset(n, TRANSFORM_SIZE * 2, seed)
    return [tf.io.encode_png(np.round(image * 255).astype(np.uint8)).numpy() for image in images], labels


def write_transformed_examples(root: str, train: int = 64, eval_: int = 32) -> dict[str, Any]:
    """A Transform output and gzip TFRecord train/eval splits under `root`.

    Returns:
      {"transform_output", "train_files", "eval_files"} as a Trainer's `FnArgs` has them.
    """
    import tempfile

    import apache_beam as beam
    import tensorflow as tf
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils

    from histopath.models import preprocessing

    raw_spec = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64),
                "patient_id": tf.io.FixedLenFeature([], tf.string)}
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(raw_spec))
    splits = {"train": encoded_images(train, 1), "eval": encoded_images(eval_, 2)}
    rows = [{"image": image, "label": int(label), "patient_id": f"p{index % 8}".encode()}
            for index, (image, label) in enumerate(zip(*splits["train"]))]
    transform_output = os.path.join(root, "transform_graph")

    def preprocessing_fn(inputs):
        return preprocessing.preprocessing_fn(inputs, {"image_size": TRANSFORM_SIZE})

    with beam.Pipeline() as pipeline, tft_beam.Context(temp_dir=tempfile.mkdtemp(dir=root)):
        transform_fn = (pipeline | beam.Create(rows), metadata) | tft_beam.AnalyzeDataset(preprocessing_fn)
        _ = transform_fn | tft_beam.WriteTransformFn(transform_output)
    metadata_io.write_metadata(metadata, os.path.join(transform_output, tft.TFTransformOutput.RAW_METADATA_DIR))
    graph = tft.TFTransformOutput(transform_output)
    files = {}
    for split, (images, labels) in splits.items():
        transformed = graph.transform_raw_features(
            {"image": tf.constant(images), "label": tf.constant(labels, tf.int64),
             "patient_id": tf.constant([f"{split}{i % 8}".encode() for i in range(len(labels))])})
        path = os.path.join(root, f"{split}.tfrecord.gz")
        with tf.io.TFRecordWriter(path, options="GZIP") as writer:
            for image, label, patient in zip(*(transformed[name].numpy() for name in (
                    preprocessing.TRANSFORMED_IMAGE, preprocessing.TRANSFORMED_LABEL, "patient_id"))):
                example = tf.train.Example(features=tf.train.Features(feature={
                    preprocessing.TRANSFORMED_IMAGE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
                    preprocessing.TRANSFORMED_LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                    "patient_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[patient]))}))
                writer.write(example.SerializeToString())
        files[split] = [path]
    return {"transform_output": transform_output, "train_files": files["train"], "eval_files": files["eval"]}


def candidate_settings(batch_size: int, epochs: int = 3, folds: int = 0, conv_layers: int = 2,
                       base_filters: int = 8) -> dict[str, Any]:
    """A small plain-CNN candidate's `custom_config`: no dropout, no augmentation, fixed epochs."""
    return {"model_kind": "cnn", "transform_size": TRANSFORM_SIZE, "folds": folds, "dataset": "synthetic",
            "model": {"image_size": TRANSFORM_SIZE, "conv_layers": conv_layers, "base_filters": base_filters,
                      "dropout": 0.0, "mixed_precision": None, "learning_rate": 0.01},
            "training": {"epochs": epochs, "batch_size": batch_size, "augment": NO_AUGMENTATION,
                         "early_stopping_patience": 100, "reduce_lr_patience": 100, "seed": 7, "verbose": 0}}


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now (the OS picks them)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tf_config(workers: int, index: int, ports: Sequence[int], vertex_names: bool = False) -> str:
    """The `TF_CONFIG` of worker `index` of `workers` (worker 0 is the chief).

    Args:
      vertex_names: name the roles by Vertex worker pools (`workerpool0`/`workerpool1`).
    """
    chief, worker = ("workerpool0", "workerpool1") if vertex_names else ("chief", "worker")
    hosts = [f"127.0.0.1:{port}" for port in ports[:workers]]
    cluster = {chief: hosts[:1], worker: hosts[1:]}
    task = {"type": chief, "index": 0} if index == 0 else {"type": worker, "index": index - 1}
    return json.dumps({"cluster": cluster, "task": task})


def run_trainers(data: Mapping[str, Any], custom_config: Mapping[str, Any], out: str, workers: int,
                 timeout: float = 600.0, vertex_names: bool = False, nice: int = 0) -> list[dict[str, Any]]:
    """Runs `run_fn` in `workers` processes (one, without `TF_CONFIG`, when `workers` is 1).

    Worker i writes to `out/worker{i}/serving` and `out/worker{i}/run` (as TFX would give
    every replica the same folders on a shared file system; separate here so that what a
    non-chief leaves behind can be seen).

    Returns:
      Per worker: {"serving", "run", "returncode", "log", "seconds"}.

    Raises:
      RuntimeError: a process failed or timed out (its log's tail in the message).
    """
    ports = free_ports(workers)
    processes = []
    for index in range(workers):
        folder = os.path.join(out, f"worker{index}")
        os.makedirs(folder, exist_ok=True)
        run = {**data, "custom_config": dict(custom_config), "serving_model_dir": os.path.join(folder, "serving"),
               "model_run_dir": os.path.join(folder, "run")}
        with open(os.path.join(folder, "run.json"), "w") as handle:
            json.dump(run, handle)
        env = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
        env.update(TF_USE_LEGACY_KERAS="1", PYTHONPATH=os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")])),
                   CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
        if workers > 1:
            env["TF_CONFIG"] = tf_config(workers, index, ports, vertex_names)
        log = open(os.path.join(folder, "log.txt"), "w")
        command = ([] if not nice else ["nice", "-n", str(nice)]) + [
            sys.executable, "-m", "tests.multi_worker_cluster", os.path.join(folder, "run.json")]
        processes.append((subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT),
                          log, run, time.time()))
    results = []
    deadline = time.time() + timeout
    for process, log, run, started in processes:
        try:
            code = process.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            for other, *_ in processes:
                other.kill()
            code = None
        log.close()
        results.append({"serving": run["serving_model_dir"], "run": run["model_run_dir"], "returncode": code,
                        "log": log.name, "seconds": time.time() - started})
    failed = [result for result in results if result["returncode"] != 0]
    if failed:
        with open(failed[0]["log"]) as handle:
            tail = handle.read()[-4000:]
        raise RuntimeError(f"{len(failed)} Trainer process(es) failed (first: {failed[0]['log']}):\n{tail}")
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs `components.trainer.run_fn` with the FnArgs of a `run_trainers` RUN.json."""
    import logging

    import histopath  # noqa: F401  (pins Keras 2 before TensorFlow is imported)
    from tfx import v1 as tfx

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True)

    from histopath.components.trainer import run_fn

    with open((argv or sys.argv[1:])[0]) as handle:
        run = json.load(handle)
    run_fn(tfx.components.FnArgs(**run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
