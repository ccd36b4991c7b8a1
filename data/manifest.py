"""The ingestion manifest (`OUTPUT/manifest.json` of `histopath ingest`): reading it, and
finding a split's shards and patients in it. Paths may be local or URIs."""

from __future__ import annotations

import os
from typing import List, Mapping, Optional

from histopath import fileio
from histopath.errors import ConfigError, DataError

MANIFEST_NAME = "manifest.json"


def load_manifest(output: str) -> dict:
    """Reads `output/manifest.json` of an ingested data set.

    Raises:
      DataError: there is no manifest (not an ingested data set, or an unfinished one).
    """
    path = fileio.join(output, MANIFEST_NAME)
    if not fileio.exists(path):
        raise DataError(f"{output} is not an ingested data set (no {MANIFEST_NAME})")
    try:
        return fileio.read_json(path)
    except ValueError as error:
        raise DataError(f"{path}: unreadable ingestion manifest ({error})") from None


def split_shard_paths(manifest: Mapping, output: str, split: str) -> list[str]:
    """The shard files of one split of an ingested data set (from `load_manifest`).

    Raises:
      DataError: the manifest has no such split, a shard file is missing, or the split
        is empty.
    """
    splits = manifest.get("splits", {})
    if split not in splits:
        raise DataError(f"{output}: the manifest has no split {split!r} (it has {sorted(splits)})")
    shards = [fileio.join(output, shard) for shard in splits[split].get("shards", [])]
    missing = [path for path in shards if not fileio.exists(path)]
    if missing:
        raise DataError(f"{output}: shard file(s) of split {split!r} missing: {missing}")
    if not shards or not splits[split].get("num_examples", 0):
        raise DataError(f"{output}: split {split!r} is empty")
    return shards


def patients_from_manifest(manifest_path: str | os.PathLike, split: str, dataset: Optional[str] = None) -> List[str]:
    """The patient ids of one split of an ingestion manifest (`histopath ingest`).

    Raises:
      DataError: unreadable manifest.
      ConfigError: unknown split, or the manifest is of another data set.
    """
    path = os.fspath(manifest_path)
    try:
        manifest = fileio.read_json(path)
        splits = manifest["splits"]
    except Exception as error:  # OSError, tf.errors.NotFoundError, ValueError, KeyError, ...
        raise DataError(f"{path}: not a readable ingestion manifest ({error})") from None
    if dataset and manifest.get("dataset") not in (None, dataset):
        raise ConfigError(f"{path} is a {manifest['dataset']} manifest, but --dataset is {dataset}")
    if split not in splits:
        raise ConfigError(f"{path} has no split {split!r} (splits: {', '.join(sorted(splits))})")
    return [str(p) for p in splits[split].get("patient_ids", [])]
