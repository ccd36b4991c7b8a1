"""Ingesting whole slides: slides in (`data.slide_layout`), tiles as `tf.train.Example`s out,
in the same output layout and manifest as `histopath ingest` of images.

    OUTPUT/
      manifest.json                          counts, patients, per-slide QC, tiling
      train/data-00000-of-00003.tfrecord.gz  one shard per slide: its tiles
      eval/...  test/...

The driver reads the labels (no slide opened), splits the patients (balanced by their
highest slide label, patients placed by earlier spans keeping their split:
`split.assign_balanced`) and saves one task per slide. Apache Beam then runs one element
per slide: the worker opens the slide, finds its tissue, cuts it into `tile_um`-micron
tiles read from the nearest pyramid level (`histopath.tiling`), checks them (background,
pen, blur), labels them (annotations, else the slide label: `slide_layout.TileLabeller`),
brings each to `tile_px` pixels with the resize `histopath predict` uses
(`evaluation.slide_predict.tile_inputs`) and writes the slide's shard. Each record holds the
image features of the other data sets (`image` PNG, `image_format`, `label`, `patient_id`,
`source_path`, `height`, `width`, `dataset`) plus `slide_id`, `patch_x`/`patch_y` (level-0
top-left) and `mpp`.

It sits with the components, above `models/`, because each tile is resized by the model
code's one resize (`models.image_ops`), exactly as `histopath predict` resizes it.

The source may be a local folder or a URI (`gs://bucket/slides`): the labels, annotations
and listings are read through `histopath.fileio`, the slides through `histopath.slides`
(tiffslide reading byte ranges, no download). The plan and summaries stay in the local
work folder; the output is published to a folder or a URI (`data.output_dir`).
"""

from __future__ import annotations

import datetime
import json
import os
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

import histopath
from histopath import fileio
from histopath.data import features, layouts, slide_layout
from histopath.data.manifest import MANIFEST_NAME
from histopath.data.output_dir import check_output_free, make_work_dir, publish, remove_quietly
from histopath.data.records import DEFAULT_COMPRESSION_LEVEL, GzipTFRecordWriter, serialize_example
from histopath.data.split import SPLIT_RULE, Assignment, assign_balanced, balance, check_cohort, parse_split_spec
from histopath.errors import ConfigError, DataError

DEFAULT_TILE_UM = 200.0  # the IDC patches' scale: 50 px at about 4 µm/px
DEFAULT_TILE_PX = 50
DEFAULT_SEED = 42
PLAN_DIR, SUMMARY_DIR = "_plan", "_summaries"
TILE_BATCH = 64  # tiles resized together


def _save_json(path: str, value) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = f"{path}.{os.getpid()}.partial"
    with open(partial, "w", encoding="utf-8") as handle:
        json.dump(value, handle)
    os.replace(partial, path)


def plan_tasks(entries: Sequence[slide_layout.SlideEntry], assignment: Mapping[str, str],
               fractions: Mapping[str, float]) -> list[dict]:
    """One task per slide: its entry, split and shard path (shards numbered per split)."""
    by_split: dict[str, list] = {name: [] for name in fractions}
    for entry in sorted(entries, key=lambda e: e.relative_path):
        by_split[assignment[entry.patient_id]].append(entry)
    tasks = []
    for split, members in by_split.items():
        for index, entry in enumerate(members):
            tasks.append({"key": f"{split}-{index:05d}", "split": split,
                          "shard": f"{split}/data-{index:05d}-of-{len(members):05d}.tfrecord.gz",
                          "entry": entry.__dict__})
    return tasks


def write_slide_shard(key: str, source: str, output: str, tile_um: float, tile_px: int, min_tissue: float,
                      compression_level: int) -> dict:
    """The Beam step: tiles one slide into its shard; returns (and saves) its summary.

    A slide that cannot be read is skipped (its reason in the summary), never half-written.
    """
    from histopath import slides, tiling
    from histopath.evaluation.slide_predict import tile_inputs

    with open(os.path.join(output, PLAN_DIR, f"{key}.json"), encoding="utf-8") as handle:
        task = json.load(handle)
    entry = slide_layout.SlideEntry(**task["entry"])
    started = time.monotonic()
    summary = {"split": task["split"], "shard": task["shard"], "slide_id": entry.slide_id,
               "slide": entry.relative_path, "patient": entry.patient_id, "slide_label": entry.label,
               "annotations": entry.annotations or None, "examples": 0, "label_counts": {"0": 0, "1": 0},
               "skipped": [], "qc": None}
    shard_path = os.path.join(output, task["shard"])
    os.makedirs(os.path.dirname(shard_path), exist_ok=True)
    try:
        regions = (slide_layout.read_annotations(fileio.join(source, entry.annotations))
                   if entry.annotations else None)
        with slides.open_slide(fileio.join(source, entry.relative_path)) as slide, \
                GzipTFRecordWriter(shard_path, compression_level) as writer:
            tiler = tiling.Tiler(slide, tile_um, tile_px, min_tissue=min_tissue)
            labeller = (slide_layout.TileLabeller(regions, tiler.grid.size0, tiler.grid.columns, tiler.grid.rows)
                        if regions is not None else None)
            unannotated = 0
            for batch in tiling.batches(iter(tiler), TILE_BATCH):
                labels = [entry.label if labeller is None else labeller.label(t.column, t.row) for t in batch]
                kept = [(tile, label) for tile, label in zip(batch, labels) if label is not None]
                unannotated += len(batch) - len(kept)
                if not kept:
                    continue
                encoded = tile_inputs([tile for tile, _ in kept], tile_px)
                for (tile, label), png in zip(kept, encoded):
                    writer.write(serialize_example({
                        features.IMAGE: png, features.IMAGE_FORMAT: "png", features.LABEL: int(label),
                        features.PATIENT_ID: entry.patient_id,
                        features.SOURCE_PATH: f"{entry.relative_path}#x={tile.x},y={tile.y}",
                        features.HEIGHT: tile_px, features.WIDTH: tile_px, features.DATASET: layouts.SLIDES,
                        features.SLIDE_ID: entry.slide_id, features.PATCH_X: tile.x, features.PATCH_Y: tile.y,
                        features.MPP: float(tile.mpp)}))
                    summary["label_counts"][str(int(label))] += 1
            counts = tiler.counts.as_dict()
            described = {"width": slide.dimensions[0], "height": slide.dimensions[1],
                         "slide_mpp": round(float(sum(slide.mpp) / 2), 6), "read_level": tiler.grid.level}
        if unannotated:
            counts["kept"] -= unannotated
            counts.setdefault("dropped", {})[slide_layout.UNANNOTATED] = unannotated
        summary.update(examples=writer.records, qc=counts, **described)
    except DataError as error:
        if os.path.exists(shard_path):
            os.remove(shard_path)
        summary["skipped"] = [[entry.relative_path, str(error)]]
    summary["seconds"] = round(time.monotonic() - started, 3)
    _save_json(os.path.join(output, SUMMARY_DIR, f"{key}.json"), summary)
    return summary


def _run_beam(keys: Sequence[str], source: str, work_dir: str, beam_args: Sequence[str], num_workers: int,
              **options) -> None:
    import apache_beam as beam

    from histopath.data.ingest import _beam_options

    with beam.Pipeline(options=_beam_options(beam_args, num_workers)) as pipeline:
        _ = (pipeline
             # Unique keys + GroupByKey: hands the slides out to the workers.
             | "Slides" >> beam.Create(list(enumerate(keys)), reshuffle=False)
             | "DistributeSlides" >> beam.GroupByKey()
             | "Unkey" >> beam.FlatMap(lambda keyed: keyed[1])
             | "TileSlides" >> beam.Map(write_slide_shard, source=source, output=work_dir, **options))


def _split_entries(entries: Sequence[slide_layout.SlideEntry], assignment: Mapping[str, str],
                   fractions: Mapping[str, float]) -> dict[str, dict]:
    """Per split: patient labels (highest slide label) and slides by label, for check_cohort."""
    result = {name: {"patient_labels": {}, "label_counts": {"benign": 0, "malignant": 0}} for name in fractions}
    for entry in entries:
        split = result[assignment[entry.patient_id]]
        labels = split["patient_labels"]
        labels[entry.patient_id] = max(labels.get(entry.patient_id, 0), entry.label)
        split["label_counts"][features.LABEL_NAMES[entry.label]] += 1
    return result


def _manifest(source: str, entries: Sequence[slide_layout.SlideEntry], assignment: Mapping[str, str],
              fractions: Mapping[str, float], summaries: Sequence[dict], **recorded) -> dict:
    splits = {}
    for split in fractions:
        mine = sorted((s for s in summaries if s["split"] == split), key=lambda s: s["shard"])
        written = [s for s in mine if not s["skipped"]]
        patient_labels: dict[str, int] = {}
        for entry in entries:
            if assignment[entry.patient_id] == split:
                patient_labels[entry.patient_id] = max(patient_labels.get(entry.patient_id, 0), entry.label)
        ordered = sorted(patient_labels, key=features.patient_sort_key)
        splits[split] = {
            "fraction": fractions[split], "num_examples": sum(s["examples"] for s in written),
            "label_counts": {name: sum(s["label_counts"][str(i)] for s in written)
                             for i, name in enumerate(features.LABEL_NAMES)},
            "num_patients": len(ordered), "patient_ids": ordered,
            "patient_labels": {p: patient_labels[p] for p in ordered},
            "num_slides": len(written), "file_pattern": f"{split}/*", "shards": [s["shard"] for s in written],
        }
    skipped = sorted(({"path": path, "reason": reason} for s in summaries for path, reason in s["skipped"]),
                     key=lambda s: s["path"])
    per_slide = [{key: s.get(key) for key in ("slide_id", "slide", "patient", "split", "slide_label", "annotations",
                                              "examples", "qc", "width", "height", "slide_mpp", "read_level",
                                              "seconds")}
                 for s in sorted(summaries, key=lambda s: s["slide"]) if not s["skipped"]]
    return {
        "manifest_version": 1, "dataset": layouts.SLIDES, "source": source,
        "histopath_version": histopath.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "split_rule": SPLIT_RULE, "split_fractions": dict(fractions), "compression": "GZIP",
        "features": sorted({features.IMAGE, features.IMAGE_FORMAT, features.LABEL, features.PATIENT_ID,
                            features.SOURCE_PATH, features.HEIGHT, features.WIDTH, features.DATASET,
                            features.SLIDE_ID, features.PATCH_X, features.PATCH_Y, features.MPP}),
        "label_names": list(features.LABEL_NAMES),
        "tile_label_rule": ("annotated slides: the class covering most of the tile, tiles covered less than half "
                            "dropped as unannotated; other slides: the slide label"),
        **recorded,
        "num_examples": sum(s["num_examples"] for s in splits.values()),
        "num_slides": len(per_slide), "splits": splits, "slides": per_slide,
        "qc_totals": _qc_totals(per_slide), "num_skipped": len(skipped), "skipped": skipped,
    }


def _qc_totals(per_slide: Sequence[dict]) -> dict:
    totals = {"total": 0, "kept": 0, "dropped": {}}
    for slide in per_slide:
        qc = slide["qc"] or {}
        totals["total"] += int(qc.get("total", 0))
        totals["kept"] += int(qc.get("kept", 0))
        for reason, count in (qc.get("dropped") or {}).items():
            totals["dropped"][reason] = totals["dropped"].get(reason, 0) + int(count)
    return totals


def ingest_slides(
    source: str,
    output: str,
    splits: str | Mapping[str, float] = "train=0.7,eval=0.15,test=0.15",
    seed: int = DEFAULT_SEED,
    tile_um: float = DEFAULT_TILE_UM,
    tile_px: int = DEFAULT_TILE_PX,
    min_tissue: Optional[float] = None,
    beam_args: Sequence[str] = (),
    overwrite: bool = False,
    num_workers: int = 2,
    compression_level: int = DEFAULT_COMPRESSION_LEVEL,
    require_every_split: bool = True,
    assigned: Optional[Assignment] = None,
    **ignored,
) -> dict:
    """Ingests a slide folder into patient-disjoint gzip TFRecord splits of tiles.

    Args:
      source: the slide folder (`data.slide_layout`).
      output: folder to create; refused if it exists unless `overwrite`.
      splits: {name: fraction} or "train=0.7,eval=0.15,test=0.15".
      seed: seed of the patient split.
      tile_um, tile_px: tiles of `tile_um` microns, stored at `tile_px` pixels.
      min_tissue: least share of a tile on the tissue mask (default `tiling.MIN_TISSUE_FRACTION`).
      beam_args: Beam options over the default multi-processing DirectRunner.
      require_every_split: refuse a cohort too small to train and evaluate.
      assigned: patients placed by earlier spans (patient -> (split, class)).
      **ignored: the image ingestion's options that do not apply (magnifications, bag_size,
        dataset), so span ingestion calls both alike.

    Returns:
      The manifest (also `output/manifest.json`).

    Raises:
      DataError: a bad layout or labels file, no tile at all, a cohort too small.
      ConfigError: bad splits or tile sizes.
    """
    from histopath import tiling
    from histopath.data.ingest import _direct_num_workers

    del ignored
    started = time.time()
    if tile_um <= 0 or int(tile_px) < 1:
        raise ConfigError(f"tile_um and tile_px must be positive, got {tile_um} and {tile_px}")
    fractions = parse_split_spec(splits)
    source, output = fileio.absolute(source), fileio.absolute(output)
    check_output_free(output, overwrite)
    entries = slide_layout.scan_slides(source)
    assignment = _assign_patients(entries, fractions, seed, assigned, require_every_split, source)
    tasks = plan_tasks(entries, assignment, fractions)
    workers = _direct_num_workers(beam_args, num_workers)
    work_dir = make_work_dir(output)
    try:
        for task in tasks:
            _save_json(os.path.join(work_dir, PLAN_DIR, f"{task['key']}.json"), task)
        options = {"tile_um": float(tile_um), "tile_px": int(tile_px), "compression_level": compression_level,
                   "min_tissue": tiling.MIN_TISSUE_FRACTION if min_tissue is None else float(min_tissue)}
        _run_beam([t["key"] for t in tasks], source, work_dir, beam_args, num_workers, **options)
        manifest = _manifest(source, entries, assignment, fractions, _read_summaries(work_dir, tasks), seed=seed,
                             tiling={"tile_um": float(tile_um), "tile_px": int(tile_px),
                                     "mpp": float(tile_um) / int(tile_px), "min_tissue": options["min_tissue"]},
                             beam_args=list(beam_args), num_workers=workers, seconds=round(time.time() - started, 2))
        manifest["balance"] = balance(manifest["splits"])
        if manifest["num_examples"] == 0:
            reasons = "; ".join(f"{s['path']}: {s['reason']}" for s in manifest["skipped"][:3]) or "no tissue tile"
            raise DataError(f"{source}: no tile from any of its {len(entries)} slide(s) ({reasons})")
        for folder in (PLAN_DIR, SUMMARY_DIR):
            remove_quietly(os.path.join(work_dir, folder))
        fileio.write_json(os.path.join(work_dir, MANIFEST_NAME), manifest, sort_keys=False)
        publish(work_dir, output, overwrite, marker=[MANIFEST_NAME])
        return manifest
    except BaseException:
        remove_quietly(work_dir)
        raise


def _assign_patients(entries: Sequence[Any], fractions: Mapping[str, float], seed: int,
                     assigned: Optional[Assignment], require_every_split: bool, source: str) -> Dict[str, str]:
    """Each patient's split (`assign_balanced`: a patient is malignant when any of its slides
    is); with `require_every_split`, a cohort too small to train and evaluate is refused."""
    strata: dict[str, int] = {}
    for entry in entries:
        strata[entry.patient_id] = max(strata.get(entry.patient_id, 0), entry.label)
    assignment = assign_balanced(strata, fractions, seed, assigned)
    if require_every_split:
        check_cohort(_split_entries(entries, assignment, fractions), fractions, source)
    return assignment


def _read_summaries(work_dir: str, tasks: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """The per-slide summaries the Beam workers wrote, in task order.

    Raises:
      RuntimeError: a slide has no summary (the pipeline lost it).
    """
    summaries = []
    for task in tasks:
        path = os.path.join(work_dir, SUMMARY_DIR, f"{task['key']}.json")
        if not os.path.exists(path):
            raise RuntimeError(f"the Beam pipeline finished without tiling slide {task['entry']['relative_path']}")
        with open(path, encoding="utf-8") as handle:
            summaries.append(json.load(handle))
    return summaries
