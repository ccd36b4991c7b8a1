"""Training across workers: the cluster in `TF_CONFIG` and `MultiWorkerMirroredStrategy`.

A Vertex AI custom job with several replicas, or a Kubeflow TFJob, starts the same
Trainer `run_fn` in every replica and tells each one the cluster in the `TF_CONFIG`
environment variable. When that cluster has more than one training worker,
`components.trainer.run_fn` trains under `tf.distribute.MultiWorkerMirroredStrategy`
(`multi_worker`): each worker keeps a copy of the model, reads its share of every global
batch and the gradients are all-reduced, so the model is the one a single worker would
train on the same global batches (up to the order of float additions and BatchNorm,
which normalises over each replica's share of the batch).

Cluster role names: `chief`/`worker` (TFJob, and Vertex's `TF_CONFIG`), or Vertex's worker
pool names `workerpool0` (the chief's pool) and `workerpool1` (the other workers), which
are read as `chief` and `worker`. Parameter servers and evaluators are refused.

Without `TF_CONFIG`, or with a single worker in it, nothing changes: no strategy, the
outputs written where TFX says.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
from typing import Any, Callable, Iterator, Mapping, Optional

import tensorflow as tf

from histopath.errors import ConfigError

logger = logging.getLogger(__name__)

TF_CONFIG = "TF_CONFIG"
CHIEF, WORKER = "chief", "worker"
# Vertex AI worker pool names -> TF cluster roles (pool 0 runs the chief).
VERTEX_POOLS = {"workerpool0": CHIEF, "workerpool1": WORKER, "workerpool2": "ps", "workerpool3": "evaluator"}
_TRAINING_ROLES = (CHIEF, WORKER)


@dataclasses.dataclass(frozen=True)
class Cluster:
    """This process's place in a multi-worker training cluster.

    Attributes:
      spec: `{"chief": ["host:port"], "worker": [...]}` (roles normalised).
      task_type: this process's role, "chief" or "worker".
      task_index: its index among the processes of that role.
    """

    spec: Mapping[str, tuple]
    task_type: str
    task_index: int

    @property
    def workers(self) -> int:
        """Training processes in the cluster (the chief included)."""
        return sum(len(self.spec.get(role, ())) for role in _TRAINING_ROLES)

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the outputs: the chief, or worker 0 without one."""
        if CHIEF in self.spec:
            return self.task_type == CHIEF
        return self.task_type == WORKER and self.task_index == 0


def cluster_from_tf_config(value: Optional[str]) -> Optional[Cluster]:
    """The training cluster a `TF_CONFIG` value describes; None for one process.

    Args:
      value: the variable's JSON text (None or empty: no cluster).

    Returns:
      The cluster when it has two or more training workers, else None.

    Raises:
      ConfigError: invalid JSON, no `task`, a role this Trainer does not run
        (parameter servers, evaluators), or a task outside the cluster.
    """
    if not value or not value.strip():
        return None
    try:
        config = json.loads(value)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{TF_CONFIG} is not JSON ({error}): {value[:200]!r}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{TF_CONFIG} must be a JSON object, got {value[:200]!r}")
    spec = {VERTEX_POOLS.get(role, role): tuple(hosts) for role, hosts in (config.get("cluster") or {}).items()}
    spec = {role: hosts for role, hosts in spec.items() if hosts}
    workers = sum(len(spec.get(role, ())) for role in _TRAINING_ROLES)
    if workers <= 1:
        return None
    others = sorted(set(spec) - set(_TRAINING_ROLES))
    if others:
        raise ConfigError(f"{TF_CONFIG} has {others} in its cluster: the Trainer trains with "
                          "MultiWorkerMirroredStrategy (chief and workers only, no parameter servers or evaluators)")
    task = config.get("task") or {}
    task_type = VERTEX_POOLS.get(task.get("type"), task.get("type"))
    index = task.get("index", 0)
    if task_type not in spec or not isinstance(index, int) or not 0 <= index < len(spec[task_type]):
        raise ConfigError(f"{TF_CONFIG} task {task!r} is not in its cluster {sorted(spec)}")
    return Cluster(spec, task_type, index)


def cluster_from_environ(environ: Optional[Mapping[str, str]] = None) -> Optional[Cluster]:
    """`cluster_from_tf_config` of the `TF_CONFIG` environment variable."""
    return cluster_from_tf_config((os.environ if environ is None else environ).get(TF_CONFIG))


def make_strategy(cluster: Cluster) -> tf.distribute.MultiWorkerMirroredStrategy:
    """The strategy for `cluster` (its normalised roles, not `TF_CONFIG` as set).

    Blocks until every worker of the cluster has started its own.
    """
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec({role: list(hosts) for role, hosts in cluster.spec.items()}),
        task_type=cluster.task_type, task_id=cluster.task_index, rpc_layer="grpc")
    strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    logger.info("multi-worker training: %s %d of %d workers, %d replicas in sync", cluster.task_type,
                cluster.task_index, cluster.workers, strategy.num_replicas_in_sync)
    return strategy


def refuse_folds(folds: int, cluster: Cluster) -> None:
    """Patient cross-validation runs on one process only.

    Raises:
      ConfigError: `folds` >= 2 in a cluster of several workers.
    """
    if folds >= 2:
        raise ConfigError(
            f"patient cross-validation (folds={folds}) is not run across workers: the {cluster.workers} "
            "workers of TF_CONFIG would each train every fold. Train this candidate on one worker "
            "(no --trainer-workers, or 1), or set its folds to 0")


def global_batch(per_replica: int, strategy: Optional[tf.distribute.Strategy]) -> int:
    """The batch every step reads in total: `per_replica` times the replicas in sync."""
    return int(per_replica) * (strategy.num_replicas_in_sync if strategy is not None else 1)


def shard_by_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` with the DATA auto-shard policy, for a strategy that distributes it.

    Every worker reads the same files in the same (seeded) order and keeps its part of
    each global batch, so the steps are those one worker takes on the whole batch.
    Sharding by file would give each worker different examples, and Transform often
    writes fewer files than there are workers. Without a strategy the option does nothing.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


@contextlib.contextmanager
def chief_writes(cluster: Optional[Cluster], *paths: str) -> Iterator[tuple]:
    """The folders to write `paths`' outputs to: themselves on the chief (or without a
    cluster), temporary folders elsewhere, deleted on exit.

    Every worker writes while it trains (TensorBoard logs, a kind's extras), but only
    the chief's outputs are the Trainer's.
    """
    if cluster is None or cluster.is_chief:
        yield paths
        return
    scratch = tempfile.mkdtemp(prefix=f"histopath-{cluster.task_type}{cluster.task_index}-")
    try:
        yield tuple(os.path.join(scratch, str(number)) for number in range(len(paths)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Returns once every worker has reached it (an all-reduce of one number).

    Workers end together: a worker that exits while the chief still exports is taken
    by the chief's coordination service for a failed task, and the chief then waits for
    its heartbeat to time out before it can exit.
    """
    strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None)


def local_copy(model: Any, build: Callable[[], Any]) -> Any:
    """A copy of `model` with plain (not distributed) variables, for export.

    Args:
      model: trained under a strategy.
      build: builds the same architecture; called outside any strategy's scope.
    """
    copy = build()
    copy.set_weights(model.get_weights())
    return copy


def describe(cluster: Optional[Cluster], strategy: Optional[tf.distribute.Strategy],
             per_replica_batch: int) -> Optional[dict[str, Any]]:
    """What `model_info.json` records of the distribution (None without a cluster)."""
    if cluster is None:
        return None
    return {"strategy": "MultiWorkerMirroredStrategy", "workers": cluster.workers,
            "replicas": strategy.num_replicas_in_sync if strategy is not None else cluster.workers,
            "per_replica_batch": int(per_replica_batch),
            "global_batch": global_batch(per_replica_batch, strategy)}
