"""Ingestion throughput against the floor of the work, in one run.

    python -m bench.ingest [--source DIR] [--workers 2] [--output-json FILE]

Measures, on the same files (default: all 22,557 IDC patches of ../shared/data/idc):

* floor: a plain single-process loop that only reads each file and decodes it with PIL
  (`Image.open` + `load`), i.e. the least work any validating ingestion must do;
* ingest: the library call `histopath.data.ingest.ingest(...)` (listing, patient split,
  Beam pipeline with `--workers` DirectRunner processes, validation, serialization, gzip
  TFRecord shards, manifest), wall time of the whole call including Beam start-up;

and reports images/s of both and their ratio (target: ingest >= 0.5x the floor). It also
measures what TensorFlow would cost in each Beam worker (import time, and building records
with `tf.train.Example` instead of the TF-free serializer), which is why the workers do not
import TensorFlow. Results go to bench/results/ingest.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import histopath  # noqa: F401  (before TensorFlow)

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = os.environ.get(
    "HISTOPATH_SHARED_DATA", str(REPO_ROOT.parent / "shared" / "data")) + "/idc"
TARGET_RATIO = 0.5

_TF_PROBE = r"""
import time, json, sys
t = time.perf_counter()
import histopath, tensorflow as tf
import_s = time.perf_counter() - t
from histopath.data.records import serialize_example
image = bytes(range(256)) * 20
def with_tf():
    return tf.train.Example(features=tf.train.Features(feature={
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
        "image_format": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"png"])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[1])),
        "patient_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"8863"])),
        "source_path": tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[b"8863/1/8863_idx5_x1001_y1501_class1.png"])),
        "height": tf.train.Feature(int64_list=tf.train.Int64List(value=[50])),
        "width": tf.train.Feature(int64_list=tf.train.Int64List(value=[50])),
        "dataset": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"idc"])),
        "patch_x": tf.train.Feature(int64_list=tf.train.Int64List(value=[1001])),
        "patch_y": tf.train.Feature(int64_list=tf.train.Int64List(value=[1501])),
    })).SerializeToString()
def without_tf():
    return serialize_example({"image": image, "image_format": "png", "label": 1,
        "patient_id": "8863", "source_path": "8863/1/8863_idx5_x1001_y1501_class1.png",
        "height": 50, "width": 50, "dataset": "idc", "patch_x": 1001, "patch_y": 1501})
assert tf.train.Example.FromString(with_tf()) == tf.train.Example.FromString(without_tf())
out = {"tf_import_seconds": import_s}
for name, fn in (("tf_example_us_per_record", with_tf), ("own_serializer_us_per_record", without_tf)):
    t = time.perf_counter()
    for _ in range(5000):
        fn()
    out[name] = (time.perf_counter() - t) / 5000 * 1e6
print(json.dumps(out))
"""


def _floor(paths: list[str]) -> float:
    """Seconds for the plain loop: read + PIL decode of every file."""
    from PIL import Image

    started = time.perf_counter()
    for path in paths:
        with open(path, "rb") as handle:
            data = handle.read()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=DEFAULT_SOURCE, help="IDC-layout folder")
    parser.add_argument("--dataset", default="idc", choices=("idc", "breakhis"))
    parser.add_argument("--workers", type=int, default=2, help="Beam worker processes")
    parser.add_argument("--compression-level", type=int, default=0,
                        help="gzip level of the shards (the library default is 0)")
    parser.add_argument("--beam-arg", action="append", default=[],
                        help="extra Beam option, e.g. --beam-arg=--direct_running_mode=multi_threading")
    parser.add_argument("--output-json", default=str(REPO_ROOT / "bench/results/ingest.json"))
    parser.add_argument("--skip-tf-probe", action="store_true",
                        help="do not measure TensorFlow's cost in a worker")
    args = parser.parse_args(argv)

    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    from histopath.data import layouts

    scan = layouts.scan_source(args.dataset, args.source)
    paths = [os.path.join(args.source, f.relative_path) for f in scan.files]
    print(f"{len(paths)} files in {args.source}; load average {os.getloadavg()[0]:.2f}")
    for path in paths:  # warm the page cache for both measurements alike
        with open(path, "rb") as handle:
            handle.read()

    floor_s = _floor(paths)
    print(f"floor  (read + PIL decode, 1 process): {floor_s:7.2f} s  "
          f"{len(paths) / floor_s:8.0f} images/s")

    from histopath.data.ingest import ingest  # Beam itself is imported inside the call

    scratch = tempfile.mkdtemp(prefix="bench-ingest-")
    try:
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        manifest = ingest(
            args.dataset, args.source, os.path.join(scratch, "out"),
            num_workers=args.workers, compression_level=args.compression_level,
            beam_args=args.beam_arg,
        )
        ingest_s = time.perf_counter() - started
        shard_bytes = sum(
            os.path.getsize(os.path.join(scratch, "out", shard))
            for split in manifest["splits"].values() for shard in split["shards"])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    shards = sum(len(s["shards"]) for s in manifest["splits"].values())
    ratio = (manifest["num_examples"] / ingest_s) / (len(paths) / floor_s)
    print(f"ingest (Beam, {args.workers} workers, {shards} shards): {ingest_s:7.2f} s  "
          f"{manifest['num_examples'] / ingest_s:8.0f} images/s")
    timing = manifest["timing"]
    print("  where the ingest time went (s since the call started): "
          + ", ".join(f"{k} {v:.1f}" for k, v in timing.items() if k != "shard_work_seconds_total")
          + f", end {ingest_s:.1f}")
    fixed = timing["first_shard_started"] + (ingest_s - timing["last_shard_finished"])
    print(f"  fixed cost (listing, Beam import, worker start-up, teardown): {fixed:.1f} s; "
          f"shard work: {timing['shard_work_seconds_total']:.1f} worker-s in "
          f"{timing['last_shard_finished'] - timing['first_shard_started']:.1f} s wall")
    print(f"ratio ingest/floor: {ratio:.2f}x  (target >= {TARGET_RATIO}x: "
          f"{'PASS' if ratio >= TARGET_RATIO else 'FAIL'})")

    results = {
        "source": args.source,
        "dataset": args.dataset,
        "images": len(paths),
        "examples_written": manifest["num_examples"],
        "skipped": manifest["num_skipped"],
        "floor_seconds": round(floor_s, 3),
        "floor_images_per_s": round(len(paths) / floor_s, 1),
        "ingest_seconds": round(ingest_s, 3),
        "ingest_images_per_s": round(manifest["num_examples"] / ingest_s, 1),
        "ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
        "workers": args.workers,
        "beam_args": args.beam_arg,
        "shards": shards,
        "compression_level": args.compression_level,
        "shard_megabytes": round(shard_bytes / 1e6, 1),
        "cpu_count": os.cpu_count(),
        "load_average_before_ingest": round(load_before, 2),
        "ingest_timing": timing,
        "fixed_cost_seconds": round(fixed, 2),
        "work_only_ratio": round(floor_s / (timing["last_shard_finished"]
                                            - timing["first_shard_started"]), 3),
    }
    if not args.skip_tf_probe:
        probe = subprocess.run([sys.executable, "-c", _TF_PROBE], capture_output=True,
                               text=True, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        tf_costs = json.loads(probe.stdout.strip().splitlines()[-1])
        results.update({k: round(v, 2) for k, v in tf_costs.items()})
        print(f"TensorFlow in a worker would cost: import {tf_costs['tf_import_seconds']:.1f} s "
              f"per process; tf.train.Example {tf_costs['tf_example_us_per_record']:.1f} us/record "
              f"vs {tf_costs['own_serializer_us_per_record']:.1f} us/record without TF")
    os.makedirs(os.path.dirname(os.path.abspath(args.output_json)), exist_ok=True)
    with open(args.output_json, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2)
        handle.write("\n")
    print(f"wrote {args.output_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
