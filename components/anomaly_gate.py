"""`AnomalyGate`: makes ExampleValidator's findings visible, and optionally fatal."""

import json
import os

import tensorflow as tf
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import v1 as tfx
from tfx.types import artifact_utils, standard_artifacts

ANOMALIES_FILE = "SchemaDiff.pb"  # what ExampleValidator writes per split
SUMMARY_FILE = "anomalies.json"


def read_anomalies(anomalies: standard_artifacts.ExampleAnomalies) -> dict[str, dict[str, str]]:
    """Returns `{split: {feature: "short description"}}` for every split with anomalies."""
    found: dict[str, dict[str, str]] = {}
    for split in artifact_utils.decode_split_names(anomalies.split_names):
        path = os.path.join(anomalies.uri, f"Split-{split}", ANOMALIES_FILE)
        if not tf.io.gfile.exists(path):
            continue
        proto = anomalies_pb2.Anomalies()
        proto.ParseFromString(tf.io.gfile.GFile(path, "rb").read())
        per_feature = {
            name: info.short_description or info.description
            for name, info in proto.anomaly_info.items()
        }
        if proto.HasField("dataset_anomaly_info"):
            per_feature["<dataset>"] = proto.dataset_anomaly_info.description
        if per_feature:
            found[split] = per_feature
    return found


@tfx.dsl.components.component
def AnomalyGate(
    anomalies: tfx.dsl.components.InputArtifact[standard_artifacts.ExampleAnomalies],
    summary: tfx.dsl.components.OutputArtifact[standard_artifacts.ExampleAnomalies],
    stop_on_anomalies: tfx.dsl.components.Parameter[int] = 0,
) -> None:
    """Summarises anomalies to `anomalies.json`; fails the run if asked to and any exist."""
    found = read_anomalies(anomalies)
    summary.split_names = anomalies.split_names
    tf.io.gfile.makedirs(summary.uri)
    with tf.io.gfile.GFile(os.path.join(summary.uri, SUMMARY_FILE), "w") as handle:
        json.dump(found, handle, indent=2, sort_keys=True)
    summary.set_int_custom_property("anomaly_count", sum(len(v) for v in found.values()))
    if found and stop_on_anomalies:
        details = "; ".join(
            f"{split}: " + ", ".join(f"{name} ({text})" for name, text in sorted(items.items()))
            for split, items in sorted(found.items())
        )
        raise RuntimeError(f"ExampleValidator found anomalies and stop_on_anomalies is set: {details}")
