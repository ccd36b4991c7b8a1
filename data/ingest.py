"""Ingestion: a BreakHis or IDC folder -> patient-disjoint gzip TFRecord splits + manifest.

    OUTPUT/
      manifest.json                         counts, patients, shards, skipped files, ...
      train/data-00000-of-00008.tfrecord.gz one tf.train.Example per image
      eval/...  test/...

The driver lists and parses the file names (no image read), splits the patients (balanced
by class; patients placed by earlier spans keep their split: `split.assign_balanced`) and
cuts each split into shards. Apache Beam then runs one element per shard: a worker reads,
validates (full PIL decode) and serializes that shard's images and writes the shard file
itself, so no record is shuffled and Beam's per-element cost is paid per shard, not per
image. Everything is written to a temporary sibling folder that is renamed into place at
the end.

With `--bag-size K` (IDC only) the records are spatial MIL bags instead: after the
patient split, each split's patches are grouped into regions of K x K patch cells
(`bags.group_into_regions`), the shard tasks list regions, and each region is written as
one record holding its PNG mosaic (`shard_writer.region_values`).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import random
import threading
import time
from typing import Mapping, Optional, Sequence

import histopath
from histopath import fileio
from histopath.console import elapsed, progress_logger
from histopath.data import bags, features, layouts
from histopath.data.layouts import ParsedFile
from histopath.data.records import DEFAULT_COMPRESSION_LEVEL
from histopath.data.output_dir import check_output_free, make_work_dir, publish, remove_quietly
from histopath.data.shard_writer import (
    DEFAULT_MAX_PIXELS,
    PROGRESS_DIR,
    SUMMARY_DIR,
    PLAN_DIR,
    ShardTask,
    save_task,
    write_planned_shard,
)
from histopath.data.manifest import MANIFEST_NAME
from histopath.data.split import (
    DEFAULT_SPLITS,
    SPLIT_RULE,
    Assignment,
    check_cohort,
    parse_split_spec,
    split_entry,
    split_files,
)
from histopath.data.split import balance as split_balance
from histopath.errors import ConfigError, DataError
from histopath.interrupts import stop_children

MANIFEST_VERSION = 1
DEFAULT_SEED = 42
DEFAULT_IMAGES_PER_SHARD = 2000  # automatic --shards: ceil(images in split / this)
DEFAULT_NUM_WORKERS = 2
PROGRESS_INTERVAL_S = 30.0  # seconds between progress lines of a long ingestion
INTERRUPT_GRACE_S = 10.0  # how long an interrupted ingestion waits for Beam to stop


def _is_within(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def plan_shards(
    split_to_files: Mapping[str, Sequence[ParsedFile | bags.Region]],
    seed: int,
    shards: int | None = None,
    images_per_shard: int = DEFAULT_IMAGES_PER_SHARD,
    num_workers: int = 1,
) -> list[ShardTask]:
    """Cuts every split into shards of near-equal size, in a seeded shuffled order.

    Args:
      split_to_files: split name -> files (sorted), or region bags; one record each.
      seed: seed of the per-split shuffle (so each shard mixes patients and labels).
      shards: shards per split; None = ceil(files / images_per_shard), plus one shard for
        the largest splits until the total is a multiple of `num_workers`. Never more
        shards than files.
      images_per_shard: target shard size when `shards` is None.
      num_workers: number of parallel workers the shards are for.

    Returns:
      The tasks, ordered for `num_workers` workers dealt round-robin (see
      `order_for_workers`).
    """
    split_to_files = {split: files for split, files in split_to_files.items() if files}
    counts = {}
    for split, files in split_to_files.items():
        wanted = shards if shards is not None else math.ceil(len(files) / images_per_shard)
        counts[split] = max(1, min(wanted, len(files)))
    if shards is None and num_workers > 1:
        by_size = sorted(split_to_files, key=lambda s: -len(split_to_files[s]))
        for split in by_size * num_workers:
            if sum(counts.values()) % num_workers == 0:
                break
            if counts[split] < len(split_to_files[split]):
                counts[split] += 1
    tasks = []
    for split, files in split_to_files.items():
        order = list(files)
        random.Random(f"{seed}:{split}").shuffle(order)
        count = counts[split]
        base, extra = divmod(len(order), count)
        start = 0
        for index in range(count):
            size = base + (1 if index < extra else 0)
            tasks.append(ShardTask(split, index, count, tuple(order[start:start + size])))
            start += size
    return order_for_workers(tasks, num_workers)


def order_for_workers(tasks: Sequence[ShardTask], num_workers: int) -> list[ShardTask]:
    """Orders tasks so that dealing them round-robin to `num_workers` balances the load.

    Largest tasks first, dealt in a snake (0, 1, 1, 0, 0, 1, ...) so that the workers'
    totals stay close; the result interleaves the workers' lists. (Beam's direct runner
    deals distinct keys of a GroupByKey to its workers round-robin in arrival order; on
    other runners the order is only a hint.)
    """
    ordered = sorted(tasks, key=lambda t: (-len(t.files), t.split, t.index))
    if num_workers <= 1:
        return ordered
    per_worker: list[list[ShardTask]] = [[] for _ in range(num_workers)]
    for position, task in enumerate(ordered):
        lap, offset = divmod(position, num_workers)
        worker = offset if lap % 2 == 0 else num_workers - 1 - offset
        per_worker[worker].append(task)
    interleaved = []
    for lap in range(max(len(w) for w in per_worker)):
        interleaved += [w[lap] for w in per_worker if lap < len(w)]
    return interleaved


def _direct_num_workers(beam_args: Sequence[str], default: int) -> int:
    """The number of local worker processes the DirectRunner will use for `beam_args`."""
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

    defaults = ["--direct_running_mode=multi_processing", f"--direct_num_workers={default}"]
    options = PipelineOptions(defaults + list(beam_args)).view_as(DirectOptions)
    if options.direct_running_mode == "in_memory":
        return 1
    return max(1, options.direct_num_workers or os.cpu_count() or 1)


def _beam_options(beam_args: Sequence[str], num_workers: int):
    from apache_beam.options.pipeline_options import PipelineOptions

    defaults = [
        "--direct_running_mode=multi_processing",
        f"--direct_num_workers={num_workers}",
    ]
    # Later flags win, so the user's --beam-arg values override the defaults.
    return PipelineOptions(defaults + list(beam_args))


def _run_pipeline(
    tasks: Sequence[ShardTask],
    source: str,
    work_dir: str,
    beam_args: Sequence[str],
    num_workers: int,
    max_pixels: int,
    compression_level: int,
) -> None:
    import apache_beam as beam

    def build(pipeline) -> None:
        _ = (
            pipeline
            # Unique keys + GroupByKey: a fusion break that hands the shard tasks out to the
            # workers (the direct runner deals distinct keys round-robin, largest first).
            # Elements are shard keys only; the file lists wait in the work folder.
            | "ShardTasks" >> beam.Create([(i, t.key) for i, t in enumerate(tasks)],
                                          reshuffle=False)
            | "DistributeShards" >> beam.GroupByKey()
            | "Unkey" >> beam.FlatMap(lambda keyed: keyed[1])
            | "WriteShards" >> beam.Map(
                write_planned_shard,
                source=source,
                output=work_dir,
                max_pixels=max_pixels,
                compression_level=compression_level,
            )
        )

    with beam.Pipeline(options=_beam_options(beam_args, num_workers)) as pipeline:
        build(pipeline)


def _files_done(progress_dir: str) -> int:
    total = 0
    try:
        names = os.listdir(progress_dir)
    except FileNotFoundError:
        return 0
    for name in names:
        if name.endswith(".partial"):
            continue
        try:
            with open(os.path.join(progress_dir, name), encoding="utf-8") as handle:
                total += int(handle.read() or 0)
        except (OSError, ValueError):
            pass  # being replaced right now; counted at the next poll
    return total


def _run_with_progress(run, total: int, progress_dir: str, description: str) -> None:
    """Runs `run()` in a thread; every `PROGRESS_INTERVAL_S` a progress line (the
    workers' progress files) goes to the `histopath.progress` logger."""
    outcome: dict = {}

    def target():
        try:
            run()
        except BaseException as error:  # re-raised in the calling thread
            outcome["error"] = error

    thread = threading.Thread(target=target, name="beam-ingest", daemon=True)
    thread.start()
    started = last_line = time.monotonic()
    try:
        while thread.is_alive():
            thread.join(0.5)
            if time.monotonic() - last_line >= PROGRESS_INTERVAL_S and thread.is_alive():
                last_line = time.monotonic()
                done = _files_done(progress_dir)
                progress_logger().info(f"    {description}: {done:,} of {total:,} ({100 * done // max(total, 1)} %), "
                                       f"{elapsed(last_line - started)}")
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: Beam's worker processes go too
        stop_children()
        thread.join(INTERRUPT_GRACE_S)  # the pipeline fails fast without its workers
        raise
    if "error" in outcome:
        raise outcome["error"]


def _read_summaries(work_dir: str, tasks: Sequence[ShardTask]) -> list[dict]:
    summaries = []
    for task in tasks:
        path = os.path.join(work_dir, SUMMARY_DIR, f"{task.key}.json")
        if not os.path.exists(path):
            raise RuntimeError(
                f"the Beam pipeline finished without writing shard {task.relative_path}"
            )
        with open(path, encoding="utf-8") as handle:
            summaries.append(json.load(handle))
    return summaries


def _build_manifest(
    *,
    dataset: str,
    source: str,
    fractions: Mapping[str, float],
    seed: int,
    magnifications: Sequence[int] | None,
    beam_args: Sequence[str],
    num_workers: int,
    scan: layouts.ScanResult,
    summaries: Sequence[dict],
    seconds: float,
    compression_level: int,
    bag_size: int | None = None,
) -> dict:
    splits = {}
    for split in fractions:
        mine = sorted((s for s in summaries if s["split"] == split), key=lambda s: s["shard"])
        label_counts = {name: 0 for name in features.LABEL_NAMES}
        patients: dict[str, int] = {}
        for summary in mine:
            for label, count in summary["label_counts"].items():
                label_counts[features.LABEL_NAMES[int(label)]] += count
            for patient, label in summary["patient_labels"].items():
                patients[patient] = max(patients.get(patient, 0), int(label))
        splits[split] = {
            "fraction": fractions[split],
            "num_examples": sum(s["examples"] for s in mine),
            "label_counts": label_counts,
            "num_patients": len(patients),
            "patient_ids": sorted(patients, key=features.patient_sort_key),
            "patient_labels": {p: patients[p] for p in sorted(patients, key=features.patient_sort_key)},
            "file_pattern": f"{split}/*",
            "shards": [s["shard"] for s in mine],
        }
    skipped = [{"path": s.path, "reason": s.reason} for s in scan.skipped]
    for summary in summaries:
        skipped.extend({"path": path, "reason": reason} for path, reason in summary["skipped"])
    skipped.sort(key=lambda s: s["path"])
    return {
        "manifest_version": MANIFEST_VERSION,
        "dataset": dataset,
        "source": source,
        "histopath_version": histopath.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "split_rule": SPLIT_RULE,
        "split_fractions": dict(fractions),
        "magnifications": list(magnifications) if magnifications else None,
        "compression": "GZIP",
        "compression_level": compression_level,
        "features": sorted(
            {features.IMAGE, features.IMAGE_FORMAT, features.LABEL, features.PATIENT_ID,
             features.SOURCE_PATH, features.HEIGHT, features.WIDTH, features.DATASET}
            | ({features.SUBTYPE, features.MAGNIFICATION, features.SLIDE_ID}
               if dataset == layouts.BREAKHIS else {features.PATCH_X, features.PATCH_Y})
            | ({features.BAG_PATCH_LABELS, features.BAG_SIZE} if bag_size else set())
        ),
        "bag_size": bag_size,
        "label_names": list(features.LABEL_NAMES),
        "num_examples": sum(s["num_examples"] for s in splits.values()),
        "splits": splits,
        "num_skipped": len(skipped),
        "skipped": skipped,
        "filtered_out_by_magnification": {str(m): n for m, n in sorted(scan.filtered.items())},
        "beam_args": list(beam_args),
        "num_workers": num_workers,
        "seconds": round(seconds, 2),
    }


def _check_options(dataset: str, shards: int | None, compression_level: int, bag_size: int | None) -> None:
    """Raises ConfigError naming a bad shard count, compression level or bag size."""
    if shards is not None and shards < 1:
        raise ConfigError(f"--shards must be at least 1, got {shards}")
    if not 0 <= compression_level <= 9:
        raise ConfigError(f"compression level must be 0-9, got {compression_level}")
    if bag_size is not None:
        if dataset != layouts.IDC:
            raise ConfigError("--bag-size applies to IDC only (spatial regions of patches)")
        if isinstance(bag_size, bool) or not isinstance(bag_size, int) or bag_size < 2:
            raise ConfigError(f"--bag-size must be an integer of at least 2, got {bag_size!r}")


def _check_folders(source: str, output: str, overwrite: bool) -> None:
    """Raises DataError when the output exists (unless `overwrite`) or the two folders nest."""
    check_output_free(output, overwrite)
    if not fileio.is_uri(source) and not fileio.is_uri(output) and os.path.isdir(source) and (
            _is_within(output, source) or _is_within(source, output)):
        raise DataError(f"output {output} and source {source} must not contain each other")


def _split_items(scan: layouts.ScanResult, fractions: Mapping[str, float], seed: int,
                 assigned: Optional[Assignment], bag_size: int | None,
                 check_for: Optional[str]) -> Mapping[str, Sequence[ParsedFile | bags.Region]]:
    """Split name -> the files (or, with `bag_size`, the region bags) its patients hold; a
    cohort too small is refused naming `check_for` (None: not checked here)."""
    split_to_files = split_files(scan.files, fractions, seed, assigned)  # by patient, from names
    if check_for is not None:
        check_cohort({name: split_entry(files) for name, files in split_to_files.items()}, fractions, check_for)
    if bag_size is None:
        return split_to_files
    split_to_items = {}
    for split, files in split_to_files.items():
        regions, overlapping = bags.group_into_regions(files, bag_size)
        split_to_items[split] = regions
        scan.skipped.extend(overlapping)
    return split_to_items


def _write_shards(tasks: Sequence[ShardTask], source: str, work_dir: str, beam_args: Sequence[str], num_workers: int,
                  max_pixels: int, compression_level: int, total_items: int, description: str) -> list[dict]:
    """Runs the Beam ingestion of `tasks` into `work_dir` with one progress line per step;
    returns each shard's summary."""
    for task in tasks:
        save_task(task, work_dir)
    _run_with_progress(
        lambda: _run_pipeline(tasks, source, work_dir, beam_args, num_workers, max_pixels, compression_level),
        total=total_items, progress_dir=os.path.join(work_dir, PROGRESS_DIR), description=description)
    return _read_summaries(work_dir, tasks)


def _check_usable(manifest: Mapping, source: str, require_every_split: bool) -> None:
    """Refuses a source with no usable image, or (`require_every_split`) a split without one."""
    if manifest["num_examples"] == 0:
        reasons = "; ".join(f"{s['path']}: {s['reason']}" for s in manifest["skipped"][:3])
        raise DataError(f"{source} holds no usable image: all {len(manifest['skipped'])} files were "
                        f"skipped (e.g. {reasons})")
    empty = [name for name, split in manifest["splits"].items() if split["num_examples"] == 0]
    if empty and require_every_split:
        raise DataError(f"split(s) {', '.join(empty)} received no usable image (their patients' files "
                        "were all skipped); see the skipped files")


def ingest(
    dataset: str,
    source: str,
    output: str,
    splits: str | Mapping[str, float] = DEFAULT_SPLITS,
    seed: int = DEFAULT_SEED,
    magnifications: str | Sequence[int] | None = None,
    shards: int | None = None,
    beam_args: Sequence[str] = (),
    overwrite: bool = False,
    num_workers: int = DEFAULT_NUM_WORKERS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    compression_level: int = DEFAULT_COMPRESSION_LEVEL,
    images_per_shard: int = DEFAULT_IMAGES_PER_SHARD,
    bag_size: int | None = None,
    require_every_split: bool = True,
    assigned: Optional[Assignment] = None,
) -> dict:
    """Ingests a BreakHis or IDC folder into patient-disjoint gzip TFRecord splits.

    Args:
      dataset: "breakhis" or "idc".
      source: the data set folder (BreakHis: the folder holding `BreaKHis_v1`, or inside
        that tree; IDC: the folder of patient folders, or inside it).
      output: folder to create; refused if it exists unless `overwrite` (then swapped in).
      splits: {name: fraction} or "train=0.7,eval=0.15,test=0.15" (fractions sum to 1).
      seed: seed of the patient split and of the order of records in the shards.
      magnifications: BreakHis only: keep these (e.g. "200" or [40, 100]); None = all.
      shards: shard files per split; None = ceil(images / images_per_shard).
      beam_args: Beam options; they override the default DirectRunner in multi-processing
        mode with `num_workers` workers.
      max_pixels: images with more pixels are skipped as decompression bombs.
      compression_level: gzip level 0-9 (0: gzip files without compressing; see `records`).
      bag_size: IDC only: K >= 2 writes one record per region of K x K patches (a spatial
        MIL bag, see the module docstring); None = one record per patch.
      require_every_split: refuse a cohort too small (`split.check_cohort`) or a split
        without usable images (False for one span of several: the window is checked).
      assigned: patients placed by earlier spans (patient -> (split, class)): they keep
        their split; only the others are placed (`split.assign_balanced`).

    Returns:
      The manifest (also written to `output/manifest.json`).

    Raises:
      DataError: missing/empty/wrong-layout source, no usable image, too few patients,
        existing output.
      ConfigError: invalid splits, magnifications or shard count.
    """
    started = time.time()
    fractions = parse_split_spec(splits)
    magnifications = layouts.parse_magnifications(magnifications)
    _check_options(dataset, shards, compression_level, bag_size)
    source, output = fileio.absolute(source), fileio.absolute(output)
    _check_folders(source, output, overwrite)

    workers = _direct_num_workers(beam_args, num_workers)
    work_dir = None  # the temporary output folder, once made
    try:
        scan = layouts.scan_source(dataset, source, magnifications)
        split_to_items = _split_items(scan, fractions, seed, assigned, bag_size,
                                      source if require_every_split else None)
        total_items = sum(len(items) for items in split_to_items.values())
        tasks = plan_shards(split_to_items, seed, shards, images_per_shard, workers)

        work_dir = make_work_dir(output)
        summaries = _write_shards(tasks, source, work_dir, beam_args, num_workers, max_pixels, compression_level,
                                  total_items, f"ingest {dataset}" + (f" {bag_size}x{bag_size} bags" if bag_size else ""))
        manifest = _build_manifest(
            dataset=dataset, source=source, fractions=fractions, seed=seed,
            magnifications=magnifications, beam_args=beam_args, num_workers=workers,
            scan=scan, summaries=summaries, seconds=time.time() - started,
            compression_level=compression_level, bag_size=bag_size,
        )
        manifest["balance"] = split_balance(manifest["splits"])
        _check_usable(manifest, source, require_every_split)
        for folder in (PROGRESS_DIR, SUMMARY_DIR, PLAN_DIR):  # the Beam run's bookkeeping
            remove_quietly(os.path.join(work_dir, folder))
        fileio.write_json(os.path.join(work_dir, MANIFEST_NAME), manifest, sort_keys=False)
        publish(work_dir, output, overwrite, marker=[MANIFEST_NAME])
        return manifest
    except BaseException:
        if work_dir is not None:
            remove_quietly(work_dir)
        raise
