"""`IngestImages`: the pipeline's first node. Raw images in, the training window's
`Examples` out.

It finds the spans under the data root (`data.spans`), ingests each span of the window
that the span store does not hold yet with the same Beam ingestion as `histopath ingest`
(`data.span_store`), and decides from the window the last training used whether this run
retrains (`spans.plan_window`; the Trainers run only when it does). Its outputs:

- `examples`: `Split-<split>/` folders holding the window's shards (hard links to the
  store where possible, copies otherwise); custom properties `retrain` (0/1), `spans`
  (span -> fingerprint, JSON) and `span_store`;
- `report`: `ingest_report.json` (spans, new or reused, counts, skipped files, patients
  per split with their class balance, the plan; for slides the tiling and each slide's
  QC counts), which the run report shows.

The local runner passes `data_fingerprint` (a hash of every span's files), so a run with
unchanged data finds this node, and everything after it, in the cache.
"""


import json
import logging
import os
from typing import Any

from tfx import v1 as tfx
from tfx.types import standard_artifacts

from histopath import fileio
from histopath.components.artifacts import IngestReport
from histopath.console import progress_logger
from histopath.data import span_store, spans as spans_lib
from histopath.data.split import SPLIT_RULE, balance

logger = logging.getLogger(__name__)
REPORT_FILE = "ingest_report.json"


def data_fingerprint(data_root: str, dataset: str) -> str:
    """A hash of every span's files (what makes a run's data new), for the local runner."""
    import hashlib

    digest = hashlib.sha256()
    for span in spans_lib.find_spans(data_root, dataset):
        digest.update(f"{span.name}:{spans_lib.fingerprint(span)}\n".encode())
    return digest.hexdigest()[:16]


def _link_or_copy(source: str, destination: str) -> None:
    """A hard link on one local file system (no bytes copied), a copy otherwise."""
    if not fileio.is_uri(source) and not fileio.is_uri(destination):
        try:
            os.link(source, destination)
            return
        except OSError:  # another file system, or links not allowed
            pass
    fileio.copy_file(source, destination)


def ingest_window(data_root: str, store: str, settings: span_store.IngestSettings,
                  window: Any, min_new_patients: int, beam_args: list[str]) -> dict[str, Any]:
    """Finds the spans, ingests the window's new ones and plans the run.

    Returns:
      {"plan": WindowPlan, "ingested": [IngestedSpan], "spans": all span names,
      "window_splits": per split over the window}.

    Raises:
      DataError: a span that does not parse, is empty or is not in the data set's
        layout (naming it; the store is left as it was), or a window too small to train
        and evaluate (`split.check_cohort`).
    """
    from histopath.data import layouts
    from histopath.data.ingest import ingest

    if settings.dataset == layouts.SLIDES:
        from histopath.components.slide_ingest import ingest_slides as ingest
    found = spans_lib.find_spans(data_root, settings.dataset)
    names = [span.name for span in found]
    window_size = spans_lib.parse_window(window)
    in_window = found if window_size is None else found[-window_size:]
    # Every span of the window is checked before anything is ingested.
    patients = {span.name: span_store.span_patients(span, settings) for span in in_window}
    fingerprints = {span.name: spans_lib.fingerprint(span) for span in in_window}
    plan = spans_lib.plan_window([s.name for s in in_window], fingerprints, patients,
                                 span_store.read_trained(store, settings), None, min_new_patients)
    ingested = []
    assigned = span_store.recorded_assignments(store, settings)  # read once; each span adds its own
    for span in in_window:
        record = span_store.ingest_span(span, fingerprints[span.name], store, settings, ingest, beam_args,
                                        assigned)
        for patient, placed in span_store.manifest_assignments(record.manifest).items():
            assigned.setdefault(patient, placed)
        verb = "ingested" if record.newly_ingested else "reused"
        progress_logger().info(f"    span {span.name}: {verb} {record.manifest['num_examples']:,} images "
                               f"of {len(patients[span.name])} patients")
        ingested.append(record)
    window_splits = span_store.window_splits(ingested)
    span_store.check_splits(window_splits, settings.splits)
    return {"plan": plan, "ingested": ingested, "spans": names, "window_splits": window_splits}


def write_examples(ingested: list[span_store.IngestedSpan], destination: str) -> dict[str, int]:
    """Puts the window's shards under `destination/Split-<split>/`; returns examples per split."""
    counts: dict[str, int] = {}
    for record in ingested:
        for split, details in record.manifest["splits"].items():
            folder = fileio.join(destination, f"Split-{split}")
            fileio.makedirs(folder)
            counts[split] = counts.get(split, 0) + int(details["num_examples"])
            for shard in details.get("shards", []):
                _link_or_copy(fileio.join(record.folder, *shard.split("/")),
                              fileio.join(folder, f"span-{record.name}-{fileio.basename(shard)}"))
    return counts


@tfx.dsl.components.component
def IngestImages(
    examples: tfx.dsl.components.OutputArtifact[standard_artifacts.Examples],
    report: tfx.dsl.components.OutputArtifact[IngestReport],
    data_root: tfx.dsl.components.Parameter[str],
    span_store_dir: tfx.dsl.components.Parameter[str],
    settings: tfx.dsl.components.Parameter[str],
    data_fingerprint: tfx.dsl.components.Parameter[str] = "",
) -> None:
    """Ingests the new spans of `data_root` and writes the training window's examples.

    Args:
      data_root: the raw image root (spans, or one data set folder); a path or URI.
      span_store_dir: where each span's records are kept between runs.
      settings: JSON: dataset, splits, seed, magnifications, bag_size, window,
        min_new_patients, beam_args (and for slides tile_um, tile_px).
      data_fingerprint: a hash of the data root's files (for the cache); "" when unknown.
    """
    del data_fingerprint  # only part of the cache key
    options = json.loads(settings)
    ingest_settings = span_store.IngestSettings(
        dataset=options["dataset"], splits=options["splits"], seed=int(options["seed"]),
        magnifications=tuple(options.get("magnifications") or ()), bag_size=options.get("bag_size"),
        tile_um=options.get("tile_um"), tile_px=options.get("tile_px"))
    result = ingest_window(data_root, span_store_dir, ingest_settings, options.get("window", "all"),
                           int(options.get("min_new_patients", 0)), list(options.get("beam_args", [])))
    plan, ingested = result["plan"], result["ingested"]
    counts = write_examples(ingested, examples.uri)
    split_names = list(ingest_settings.splits)
    examples.split_names = json.dumps(split_names)
    examples.span = max(spans_lib.span_number(r.name) or 0 for r in ingested)
    window = {record.name: record.fingerprint for record in ingested}
    examples.set_int_custom_property("retrain", int(plan.retrain))
    examples.set_string_custom_property("spans", json.dumps(window))
    examples.set_string_custom_property("span_store", span_store.settings_dir(span_store_dir, ingest_settings))
    content = {
        "data_root": fileio.absolute(data_root),
        "dataset": ingest_settings.dataset,
        "spans": result["spans"],
        "window": [
            {"span": r.name, "fingerprint": r.fingerprint, "ingested_now": r.newly_ingested, "folder": r.folder,
             "examples": r.manifest["num_examples"],
             "splits": {s: {"examples": d["num_examples"], "label_counts": d["label_counts"],
                            "patients": d["patient_ids"]} for s, d in r.manifest["splits"].items()},
             "skipped": r.manifest.get("skipped", []),
             **({"tiling": r.manifest["tiling"], "slides": r.manifest["slides"], "qc_totals": r.manifest["qc_totals"]}
                if "slides" in r.manifest else {})}
            for r in ingested],
        "plan": {"retrain": plan.retrain, "reason": plan.reason, "new_spans": list(plan.new_spans),
                 "new_patients": list(plan.new_patients), "window": list(plan.window)},
        "examples_per_split": counts,
        "splits": {name: {"patients": list(entry["patient_labels"]), **entry}
                   for name, entry in result["window_splits"].items()},
        "balance": balance(result["window_splits"]),
        "split_rule": SPLIT_RULE,
        "seed": ingest_settings.seed,
        "settings_key": ingest_settings.key(),
    }
    fileio.write_json(fileio.join(report.uri, REPORT_FILE), content, sort_keys=False)
    progress_logger().info(f"    {'retrain' if plan.retrain else 'no retraining'}: {plan.reason}")
