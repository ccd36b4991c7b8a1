"""A Pusher executor that publishes a model version atomically.

TFX's own Pusher copies the SavedModel file by file into `<base>/<version>/` (the
`saved_model.pb` last); a TF Serving instance polling that folder can still see, and try
to load, a half-copied version. This executor copies into a hidden sibling folder, whose
non-numeric name every model server ignores, and renames it into place in one step.

It also adds a version policy (`custom_config={"version_policy": ...}`):
`"timestamp"` (TFX's default: Unix seconds) or `"increment"` (highest existing + 1).
"""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
import time
import uuid
from typing import Any

from tfx.components.pusher import executor as pusher_executor
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import json_utils, proto_utils

logger = logging.getLogger(__name__)


def numeric_versions(base_directory: pathlib.Path) -> list[int]:
    """The published versions under a model folder (integer-named sub-folders)."""
    if not base_directory.is_dir():
        return []
    return sorted(int(p.name) for p in base_directory.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(base_directory: pathlib.Path, policy: str) -> int:
    """The version number a new push gets under `policy`; always above existing ones."""
    existing = numeric_versions(base_directory)
    latest = existing[-1] if existing else 0
    if policy == "increment":
        return latest + 1
    if policy == "timestamp":
        return max(int(time.time()), latest + 1)
    raise ValueError(f"unknown version policy {policy!r} (timestamp | increment)")


def publish_version(model_path: str, base_directory: pathlib.Path, version: int) -> pathlib.Path:
    """Copies `model_path` to `<base>/<version>` via a hidden temp folder and a rename."""
    base_directory.mkdir(parents=True, exist_ok=True)
    final = base_directory / str(version)
    staging = base_directory / f".{version}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        shutil.copytree(model_path, staging)
        os.rename(staging, final)  # atomic on one file system; fails if `final` exists
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final


class AtomicPusherExecutor(pusher_executor.Executor):
    """Pusher executor with write-then-rename publishing and a version policy."""

    def Do(self, input_dict: dict[str, list[Any]], output_dict: dict[str, list[Any]], exec_properties: dict[str, Any]) -> None:
        model_push = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.PUSHED_MODEL_KEY]
        )
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return
        push_destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(
            exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], push_destination
        )
        base = push_destination.filesystem.base_directory
        if "://" in base:  # object stores have no atomic rename: use TFX's copy order
            super().Do(input_dict, output_dict, exec_properties)
            return
        custom_config = json_utils.loads(
            exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY) or "null"
        ) or {}
        policy = custom_config.get("version_policy", "timestamp")
        model_path = self.GetModelPath(input_dict)
        base_directory = pathlib.Path(base)
        for attempt in range(5):  # another pusher may take the same number: retry
            version = next_version(base_directory, policy)
            try:
                serving_path = publish_version(model_path, base_directory, version)
                break
            except OSError:
                if attempt == 4 or not (base_directory / str(version)).exists():
                    raise
        logger.info("Model published atomically to %s", serving_path)
        shutil.copytree(model_path, model_push.uri, dirs_exist_ok=True)  # archive, as TFX does
        self._MarkPushed(model_push, pushed_destination=str(serving_path), pushed_version=str(version))
