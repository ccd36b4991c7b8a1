"""A Pusher executor that publishes a model version so that no model server ever loads a
half-copied one, on a local file system and on an object store alike.

- Local (POSIX) destination: the SavedModel is copied into a hidden sibling folder, whose
  non-numeric name every model server ignores, and renamed into place in one step.
- Object store (`gs://`, `s3://`, ...): there is no rename, so every file is copied first
  and `saved_model.pb`, the file TF Serving waits for, last.

Either way the version is a number no folder of the model uses yet, complete or not
(`exported.used_versions`). Version policy (`custom_config={"version_policy": ...}`):
`"timestamp"` (TFX's default: Unix seconds) or `"increment"` (highest used + 1).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from tfx import v1 as tfx
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import executor_spec
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import json_utils, proto_utils

from histopath import fileio
from histopath.models.exported import SAVED_MODEL_FILE, VERSION_POLICIES, used_versions

logger = logging.getLogger(__name__)
_ATTEMPTS = 5  # another pusher may take the same number meanwhile: try the next one


def next_version(model_dir: str, policy: str) -> int:
    """The version number a new push gets under `policy`; above every used one."""
    existing = used_versions(model_dir)
    latest = existing[-1] if existing else 0
    if policy == "increment":
        return latest + 1
    if policy == "timestamp":
        return max(int(time.time()), latest + 1)
    raise ValueError(f"unknown version policy {policy!r} ({' | '.join(VERSION_POLICIES)})")


def publish_model(model_path: str, model_dir: str, policy: str) -> tuple[str, int]:
    """Publishes the SavedModel folder `model_path` as a new version of `model_dir`.

    Args:
      model_path: the exported model (holds `saved_model.pb`).
      model_dir: `<serving dir>/<model name>`, a local path or a URI.
      policy: "timestamp" or "increment".

    Returns:
      `(version folder, version number)`.
    """
    for attempt in range(_ATTEMPTS):
        version = next_version(model_dir, policy)
        destination = fileio.join(model_dir, str(version))
        try:
            fileio.publish_tree(model_path, destination, marker=[SAVED_MODEL_FILE])
            return destination, version
        except (FileExistsError, OSError):
            if attempt == _ATTEMPTS - 1 or not fileio.exists(destination):
                raise
    raise AssertionError("unreachable")


class AtomicPusherExecutor(pusher_executor.Executor):
    """Pusher executor with whole-version publishing and a version policy."""

    def Do(self, input_dict: dict[str, list[Any]], output_dict: dict[str, list[Any]],
           exec_properties: dict[str, Any]) -> None:
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
        custom_config = json_utils.loads(
            exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY) or "null"
        ) or {}
        policy = custom_config.get("version_policy", "timestamp")
        model_path = self.GetModelPath(input_dict)
        model_dir = push_destination.filesystem.base_directory
        serving_path, version = publish_model(model_path, model_dir, policy)
        logger.info("model published to %s", serving_path)
        fileio.copy_tree(model_path, model_push.uri)  # the artifact keeps a copy, as TFX's Pusher does
        self._MarkPushed(model_push, pushed_destination=serving_path, pushed_version=str(version))


class Pusher(tfx.components.Pusher):
    """TFX's Pusher with `AtomicPusherExecutor`."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(AtomicPusherExecutor)
