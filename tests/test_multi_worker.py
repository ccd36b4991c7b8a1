"""The Trainer's `run_fn` on two worker processes on loopback (`models.distribute`).

Two `python` processes run `components.trainer.run_fn` with the `TF_CONFIG` a Vertex AI
custom job (worker pool names) or a TFJob (`chief`/`worker`) sets, ports free on
127.0.0.1, on a real Transform output of synthetic tissue images
(`tests.multi_worker_cluster`). The chief exports, the worker leaves nothing behind.

The default run has the one two-worker run, the only test that runs the strategy for
real (justified over 60 s: 105 s with its Transform fixture here, on 2 cores at a load
average of 7-9; most of it is the processes' imports). Marked `bench`:
the refusal of patient folds by both processes (also unit-tested in
`models/distribute_test.py`) and the comparison with one worker (same global batch of 16,
same seed, no augmentation or dropout), which adds a third Trainer process. The two models are not
bit-identical, because BatchNorm normalises over each replica's 8 examples under the
strategy and over the 16 of the batch in one process, and Adam (learning rate 0.01)
carries that small gradient difference into every step. The test therefore asks that
the weights of the two runs differ by much less than training moved them (see
docs/kubeflow.md, "Training across workers", for the observed figures).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests import multi_worker_cluster as cluster

PER_REPLICA_BATCH = 8


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return cluster.write_transformed_examples(str(tmp_path_factory.mktemp("transformed")))


@pytest.fixture(scope="module")
def two_workers(data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("two"))
    return cluster.run_trainers(data, cluster.candidate_settings(PER_REPLICA_BATCH), out, 2, vertex_names=True)


def _model_info(serving: str) -> dict:
    with open(os.path.join(serving, "assets.extra", "model_info.json")) as handle:
        return json.load(handle)


def _weights(serving: str) -> list[np.ndarray]:
    import tensorflow as tf

    checkpoint = os.path.join(serving, "variables", "variables")
    count = sum(1 for name, _ in tf.train.list_variables(checkpoint) if name.startswith("model_variables/"))
    return [tf.train.load_variable(checkpoint, f"model_variables/{i}/.ATTRIBUTES/VARIABLE_VALUE")
            for i in range(count)]


def test_the_chief_exports_and_the_worker_does_not(two_workers):
    chief, worker = two_workers
    info = _model_info(chief["serving"])
    assert info["distribution"] == {"strategy": "MultiWorkerMirroredStrategy", "workers": 2, "replicas": 2,
                                    "per_replica_batch": PER_REPLICA_BATCH, "global_batch": 2 * PER_REPLICA_BATCH}
    assert info["training_config"]["batch_size"] == 2 * PER_REPLICA_BATCH
    assert info["trained_in"] == chief["serving"]
    assert len(info["history"]["loss"]) == 3
    assert os.listdir(chief["run"]), "the chief's TensorBoard logs"
    assert not os.path.exists(worker["serving"]) and not os.path.exists(worker["run"])
    with open(worker["log"]) as handle:
        assert "multi-worker training: worker 0 of 2 workers, 2 replicas in sync" in handle.read()


@pytest.mark.bench
def test_patient_folds_are_refused_on_every_worker_with_a_clear_message(data, tmp_path):
    with pytest.raises(RuntimeError, match="2 Trainer process") as error:
        cluster.run_trainers(data, cluster.candidate_settings(PER_REPLICA_BATCH, folds=3), str(tmp_path), 2,
                             timeout=300)
    assert "patient cross-validation (folds=3) is not run across workers" in str(error.value)


@pytest.mark.bench
def test_two_workers_train_the_model_one_worker_trains_on_the_same_global_batch(data, two_workers,
                                                                                 tmp_path):
    import tensorflow as tf

    from histopath.models import registry
    from histopath.models.config import CandidateSettings

    one = cluster.run_trainers(data, cluster.candidate_settings(2 * PER_REPLICA_BATCH), str(tmp_path), 1)[0]
    settings = CandidateSettings.from_dict(cluster.candidate_settings(2 * PER_REPLICA_BATCH))
    tf.keras.utils.set_random_seed(settings.training_config().seed)  # as models.fit before building
    start = registry.get("cnn").module().build(settings.model_config()).get_weights()
    single, multi = _weights(one["serving"]), _weights(two_workers[0]["serving"])
    assert [w.shape for w in single] == [w.shape for w in multi] == [w.shape for w in start]
    moved = np.sqrt(sum(np.sum((s - w0) ** 2) for s, w0 in zip(single, start)))
    differ = np.sqrt(sum(np.sum((m - s) ** 2) for m, s in zip(multi, single)))
    assert moved > 0.5, "training moved the weights"
    assert differ < 0.2 * moved, (differ, moved)
    single_info, multi_info = _model_info(one["serving"]), _model_info(two_workers[0]["serving"])
    np.testing.assert_allclose(multi_info["history"]["loss"], single_info["history"]["loss"], rtol=0.1)
    assert abs(multi_info["decision_threshold"] - single_info["decision_threshold"]) < 0.02
