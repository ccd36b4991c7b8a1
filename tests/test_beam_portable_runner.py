"""The Beam steps of the real pipeline on Beam's portable runner, off the in-process
DirectRunner: IngestImages (our Beam ingestion), StatisticsGen (TFDV), SchemaGen,
CurateSchema, ExampleValidator, AnomalyGate and Transform (TFT) of `create_components()`,
run by TFX's LocalDagRunner with `--runner=PortableRunner` against Beam's Python job server
in its own process, whose jobs execute in SDK worker processes of a separate worker pool
(`--environment_type=EXTERNAL`), exactly as on a cluster's job server with a worker-pool
sidecar. The artifacts must be those of the DirectRunner on the same generated sample: the
same records, the same statistics, the same transformed examples. Last, the whole pipeline
(`histopath run`, TFMA's Evaluator included) on the job server and the worker pool.

Flink and Spark job servers are Java (Maven jars, not on PyPI or in Debian): docs/kubeflow.md,
"Beam runners", says what was checked about them.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import re
import time

import pytest
from beam_portable import PortableBeam

from histopath.data.sample import make_sample
from histopath.pipeline.config import resolve

# About 3 minutes for both runs on 2 busy cores: opt-in, `pytest -m portable`.
pytestmark = [pytest.mark.e2e, pytest.mark.portable]
STEPS = ("IngestImages", "StatisticsGen", "SchemaGen", "CurateSchema", "ExampleValidator", "AnomalyGate", "Transform")


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample") / "data"
    make_sample("breakhis", str(root), patients=6, images_per_patient=4, seed=5)
    return root


def _run_beam_steps(sample: pathlib.Path, output: pathlib.Path, beam_args: list[str]) -> pathlib.Path:
    """The pipeline's components up to Transform, run by LocalDagRunner; its pipeline root."""
    from tfx import v1 as tfx

    from histopath.components.ingest import data_fingerprint
    from histopath.pipeline.create import create_components

    config = resolve({"dataset": "breakhis", "data_dir": str(sample), "output_dir": str(output), "seed": 5,
                      "image_size": 64, "beam_args": beam_args})
    components = create_components(config, data_fingerprint(config.data_dir, config.dataset), retrain_gate=False)
    pipeline = tfx.dsl.Pipeline(
        pipeline_name="portable-beam", pipeline_root=str(output / "pipeline_root"),
        components=[components[name] for name in STEPS],
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(output / "metadata.sqlite")),
        beam_pipeline_args=list(config.beam_args))
    tfx.orchestration.LocalDagRunner().run(pipeline)
    return output / "pipeline_root"


def _records(folder: pathlib.Path) -> dict[str, list[str]]:
    """Split name -> sorted SHA-256 of every tf.Example under `folder/Split-*`."""
    import tensorflow as tf

    found = {}
    for split in sorted(folder.glob("Split-*")):
        digests = []
        for path in sorted(split.iterdir()):
            compression = "GZIP" if path.name.endswith(".gz") else ""
            # Re-serialized deterministically: the order of a tf.Example's feature map in the
            # bytes a writer produced is not part of its content.
            digests += [hashlib.sha256(tf.train.Example.FromString(record.numpy()).SerializeToString(
                deterministic=True)).hexdigest()
                for record in tf.data.TFRecordDataset(str(path), compression_type=compression)]
        found[split.name] = sorted(digests)
    return found


def _statistics(folder: pathlib.Path) -> dict[str, dict]:
    """Split -> example count and each feature's counts, numeric min/max/mean, unique values."""
    import tensorflow_data_validation as tfdv

    found = {}
    for path in sorted(folder.glob("Split-*/FeatureStats.pb")):
        (dataset,) = tfdv.load_stats_binary(str(path)).datasets
        features = {}
        for feature in dataset.features:
            kind = feature.WhichOneof("stats")
            stats = getattr(feature, kind)
            common = stats.common_stats
            entry = {"non_missing": common.num_non_missing, "missing": common.num_missing,
                     "values": (common.min_num_values, common.max_num_values, common.tot_num_values)}
            if kind == "num_stats":
                entry["numbers"] = (stats.min, stats.max, round(stats.mean, 6), stats.num_zeros)
            elif kind == "string_stats":
                entry["unique"] = stats.unique
            elif kind == "bytes_stats":
                entry["bytes"] = (stats.unique, stats.min_num_bytes, stats.max_num_bytes)
            features[feature.path.step[-1] if feature.path.step else feature.name] = entry
        found[path.parent.name] = {"examples": dataset.num_examples, "features": features}
    return found


def _artifacts(pipeline_root: pathlib.Path) -> dict[str, object]:
    def output(component: str, name: str) -> pathlib.Path:
        (folder,) = (pipeline_root / component / name).iterdir()  # one execution
        return folder

    return {"examples": _records(output("IngestImages", "examples")),
            "statistics": _statistics(output("StatisticsGen", "statistics")),
            "schema": (output("CurateSchema", "curated_schema") / "schema.pbtxt").read_text(),
            "transformed": _records(output("Transform", "transformed_examples"))}


FIGURES: dict[str, object] = {}


@pytest.fixture(scope="module")
def direct_run(sample, tmp_path_factory):
    started = time.monotonic()
    root = _run_beam_steps(sample, tmp_path_factory.mktemp("direct"),
                           ["--runner=DirectRunner", "--direct_running_mode=in_memory"])
    FIGURES["direct_seconds"] = round(time.monotonic() - started, 1)
    return _artifacts(root)


@pytest.fixture(scope="module")
def portable_run(sample, tmp_path_factory):
    work = tmp_path_factory.mktemp("portable")
    started = time.monotonic()
    with PortableBeam(work / "beam") as beam:
        root = _run_beam_steps(sample, work / "run", beam.pipeline_args)
        workers = beam.worker_processes()
        job_log = (work / "beam" / "job_server.log").read_text(errors="replace")
    FIGURES["portable_seconds"] = round(time.monotonic() - started, 1)
    return _artifacts(root), workers, job_log


@pytest.fixture(scope="module")
def embedded_run(sample, tmp_path_factory):
    """Beam's job server inside each step's process, SDK workers in that process too."""
    started = time.monotonic()
    root = _run_beam_steps(sample, tmp_path_factory.mktemp("embedded"),
                           ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"])
    FIGURES["embedded_loopback_seconds"] = round(time.monotonic() - started, 1)
    return _artifacts(root)


def test_the_job_server_ran_one_job_per_beam_step_in_the_worker_pools_processes(portable_run):
    _, workers, job_log = portable_run
    # IngestImages, StatisticsGen and Transform are Beam steps (SchemaGen, CurateSchema,
    # ExampleValidator and AnomalyGate are not): three jobs, each in a new SDK worker process.
    done = [float(s) for s in re.findall(r"Completed job in ([0-9.]+) seconds with state DONE", job_log)]
    assert len(done) == 3 and job_log.count("Running job") == 3, job_log[-3000:]
    assert workers == 3, f"{workers} SDK worker processes were started by the pool"
    FIGURES["job_seconds"] = [round(seconds, 1) for seconds in done]


def test_portable_and_direct_runners_write_the_same_artifacts(direct_run, portable_run, artifacts_dir):
    portable, _, _ = portable_run
    assert set(direct_run["examples"]) >= {"Split-train", "Split-eval", "Split-test"}
    assert all(direct_run["examples"].values()), "a split without records"
    assert portable["examples"] == direct_run["examples"]
    assert portable["statistics"] == direct_run["statistics"]
    assert sum(s["examples"] for s in portable["statistics"].values()) == \
        sum(len(records) for records in portable["examples"].values())
    assert portable["schema"] == direct_run["schema"]
    assert set(portable["transformed"]) == {"Split-train", "Split-eval"}
    assert portable["transformed"] == direct_run["transformed"]
    FIGURES["records"] = {split: len(records) for split, records in portable["examples"].items()}
    (artifacts_dir / "beam-portable-runner.json").write_text(json.dumps(FIGURES, indent=2))


def test_embedded_job_server_with_loopback_workers_writes_the_same_artifacts(direct_run, embedded_run, artifacts_dir):
    assert embedded_run == direct_run
    (artifacts_dir / "beam-portable-runner.json").write_text(json.dumps(FIGURES, indent=2))


def test_the_whole_pipeline_runs_on_the_job_server_evaluator_included(sample, tmp_path):
    """`histopath run` with every Beam step (TFMA's Evaluator too) on the job server and the
    worker pool: four Beam jobs, a blessed model pushed."""
    import subprocess
    import sys

    from histopath.models import exported

    output = tmp_path / "run"
    settings = tmp_path / "settings.json"  # bless whatever trains on 24 synthetic images
    settings.write_text(json.dumps({"thresholds": {"min_auc": 0.0, "min_balanced_accuracy": 0.0,
                                                   "max_auc_drop_vs_pushed": 1.0}}))
    histopath = str(pathlib.Path(sys.executable).parent / "histopath")
    with PortableBeam(tmp_path / "beam") as beam:
        done = subprocess.run(
            [histopath, "run", "--dataset", "breakhis", "--data", str(sample), "--preset", "demo", "--config",
             str(settings), "--models", "mil", "--epochs", "1", "--image-size", "64", "--seed", "5", "--output", str(output),
             *[f"--beam-arg={arg}" for arg in beam.pipeline_args]], capture_output=True, text=True, timeout=1100)
        job_log = (tmp_path / "beam" / "job_server.log").read_text(errors="replace")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    # IngestImages, StatisticsGen, Transform, evaluator_mil
    assert job_log.count("with state DONE") == 4 and job_log.count("Running job") == 4, job_log[-3000:]
    evaluator = output / "pipeline_root" / "evaluator_mil"
    assert list(evaluator.glob("evaluation/*/metrics*")), "TFMA wrote no metrics"
    assert list(evaluator.glob("blessing/*/BLESSED")), "the Evaluator did not bless the model"
    assert exported.list_versions(str(output / "serving" / "histopath")) == [1]
