"""Reading a local run back from ML Metadata: what ran, what came from the cache, how long."""

from __future__ import annotations

import dataclasses
import pathlib

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2



@dataclasses.dataclass
class ComponentExecution:
    """One component's execution in one pipeline run."""

    component_id: str
    state: str  # "COMPLETE", "CACHED", "FAILED", "RUNNING", ...
    seconds: float  # wall time from the execution's creation to its last update


def _store(metadata_path: str | pathlib.Path) -> mlmd.MetadataStore:
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(metadata_path)
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return mlmd.MetadataStore(config)


def component_executions(metadata_path: str | pathlib.Path, run_id: str | None = None) -> list[ComponentExecution]:
    """The executions of one run (default: the newest), in the order they started."""
    store = _store(metadata_path)
    runs = sorted(store.get_contexts_by_type("pipeline_run"), key=lambda c: c.create_time_since_epoch)
    if not runs:
        return []
    run = runs[-1] if run_id is None else next(c for c in runs if c.name == run_id)
    executions = sorted(store.get_executions_by_context(run.id), key=lambda e: e.create_time_since_epoch)
    node_of = {}
    for context in store.get_contexts_by_type("node"):
        for execution in store.get_executions_by_context(context.id):
            node_of[execution.id] = context.name.split(".", 1)[-1]
    return [
        ComponentExecution(
            component_id=node_of.get(e.id, e.type),
            state=metadata_store_pb2.Execution.State.Name(e.last_known_state),
            seconds=(e.last_update_time_since_epoch - e.create_time_since_epoch) / 1000.0,
        )
        for e in executions
    ]
