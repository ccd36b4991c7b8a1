"""Tests of `models.distribute`: reading TF_CONFIG, folds refused, chief-only outputs.

The strategy itself runs in `tests/test_multi_worker.py` (two processes on loopback).
"""

from __future__ import annotations

import json
import os

import pytest
import tensorflow as tf

from histopath.errors import ConfigError
from histopath.models import distribute


def _config(cluster, task):
    return json.dumps({"cluster": cluster, "task": task})


@pytest.mark.parametrize("value", [None, "", "  ", _config({"chief": ["h:1"]}, {"type": "chief", "index": 0}),
                                   _config({"worker": ["h:1"]}, {"type": "worker", "index": 0}),
                                   _config({"workerpool0": ["h:1"]}, {"type": "workerpool0", "index": 0})])
def test_no_cluster_or_a_single_worker_means_one_process(value):
    assert distribute.cluster_from_tf_config(value) is None


def test_a_tfjob_cluster_has_a_chief_and_workers():
    cluster = distribute.cluster_from_tf_config(
        _config({"chief": ["a:1"], "worker": ["b:1", "c:1"]}, {"type": "worker", "index": 1}))
    assert (cluster.workers, cluster.task_type, cluster.task_index, cluster.is_chief) == (3, "worker", 1, False)
    chief = distribute.cluster_from_tf_config(
        _config({"chief": ["a:1"], "worker": ["b:1"]}, {"type": "chief", "index": 0}))
    assert chief.is_chief


def test_vertex_worker_pool_names_are_read_as_chief_and_worker():
    cluster = distribute.cluster_from_tf_config(
        _config({"workerpool0": ["a:1"], "workerpool1": ["b:1", "c:1"]}, {"type": "workerpool0", "index": 0}))
    assert dict(cluster.spec) == {"chief": ("a:1",), "worker": ("b:1", "c:1")}
    assert cluster.is_chief and cluster.workers == 3


def test_without_a_chief_worker_zero_writes_the_outputs():
    spec = {"worker": ["a:1", "b:1"]}
    assert distribute.cluster_from_tf_config(_config(spec, {"type": "worker", "index": 0})).is_chief
    assert not distribute.cluster_from_tf_config(_config(spec, {"type": "worker", "index": 1})).is_chief


@pytest.mark.parametrize("value, message", [
    ("{not json", "not JSON"),
    ("[1, 2]", "JSON object"),
    (_config({"chief": ["a:1"], "worker": ["b:1"], "ps": ["c:1"]}, {"type": "chief", "index": 0}), "parameter servers"),
    (_config({"chief": ["a:1"], "worker": ["b:1"]}, {"type": "worker", "index": 3}), "not in its cluster"),
    (_config({"chief": ["a:1"], "worker": ["b:1"]}, {}), "not in its cluster"),
])
def test_a_tf_config_the_trainer_cannot_run_is_refused_by_name(value, message):
    with pytest.raises(ConfigError, match=message) as error:
        distribute.cluster_from_tf_config(value)
    assert "TF_CONFIG" in str(error.value)


def test_cluster_from_environ_reads_tf_config():
    environ = {"TF_CONFIG": _config({"chief": ["a:1"], "worker": ["b:1"]}, {"type": "chief", "index": 0})}
    assert distribute.cluster_from_environ(environ).workers == 2
    assert distribute.cluster_from_environ({}) is None


def test_patient_folds_are_refused_across_workers():
    cluster = distribute.Cluster({"chief": ("a:1",), "worker": ("b:1",)}, "chief", 0)
    distribute.refuse_folds(0, cluster)
    with pytest.raises(ConfigError, match=r"folds=5.*one worker"):
        distribute.refuse_folds(5, cluster)


def test_only_the_chief_writes_where_it_is_told(tmp_path):
    target = str(tmp_path / "run")
    chief = distribute.Cluster({"chief": ("a:1",), "worker": ("b:1",)}, "chief", 0)
    with distribute.chief_writes(chief, target) as (folder,):
        assert folder == target
    with distribute.chief_writes(None, target) as (folder,):
        assert folder == target
    worker = distribute.Cluster({"chief": ("a:1",), "worker": ("b:1",)}, "worker", 0)
    with distribute.chief_writes(worker, target, target + "2") as (folder, other):
        assert folder != target and other != folder
        os.makedirs(folder)
        open(os.path.join(folder, "events"), "w").close()
        scratch = os.path.dirname(folder)
    assert not os.path.exists(scratch) and not os.path.exists(target)


def test_global_batch_and_data_sharding():
    assert distribute.global_batch(8, None) == 8
    assert distribute.global_batch(8, tf.distribute.get_strategy()) == 8  # the default strategy: one replica
    sharded = distribute.shard_by_data(tf.data.Dataset.range(4))
    assert sharded.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.DATA
    assert list(sharded.as_numpy_iterator()) == [0, 1, 2, 3]


def test_the_local_copy_has_the_trained_weights_and_plain_variables():
    import tf_keras as keras

    def build():
        return keras.Sequential([keras.layers.Dense(2, input_shape=(3,)), keras.layers.BatchNormalization()])

    trained = build()
    trained.set_weights([w + 1.0 for w in trained.get_weights()])
    copy = distribute.local_copy(trained, build)
    assert copy is not trained
    for a, b in zip(copy.get_weights(), trained.get_weights()):
        assert (a == b).all()
