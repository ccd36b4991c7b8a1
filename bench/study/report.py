"""Writes the study's report under docs/results/: results.json (every step result), the
figures, and the generated tables as markdown.

    tables.md           test-patient results (`tables.result_tables`)
    patient_cv.md       the IDC patient-level cross-validation (`cv_tables.cv_tables`)
    compute.md          wall time, memory, throughput, precision (`run_tables.compute_tables`)
    reproducibility.md  settings, machine, packages, configs, commands

Tables and figures only: the prose that reads them is docs/results.md, written by hand.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from bench.common import save_figure, write_json, write_text
from bench.study import cv_tables, run_tables, tables
from bench.study.steps import Context
from bench.study.tables import Table

RESULTS_FOLDER = "results"  # under the docs folder, next to results.md
SLIDE_FIGURE_MAX_SIDE = 900  # a figure of the result, not a copy of the slide
FIGURES_PER_KIND = 3  # slide figures of each kind copied (the first test patients)


def copy_figure(source: str, figures: pathlib.Path, name: str, max_side: Optional[int] = None) -> pathlib.Path:
    """Copies a figure into `figures` as `name`, scaled down to `max_side` pixels if given."""
    figures.mkdir(parents=True, exist_ok=True)
    target = figures / name
    if max_side is None:
        shutil.copyfile(source, target)
    else:
        from PIL import Image

        with Image.open(source) as image:
            image.thumbnail((max_side, max_side))
            image.save(target, format="PNG", optimize=True)
    return target


def slide_context_maps(images: List[Dict[str, Any]], figures: pathlib.Path, prefix: str) -> List[pathlib.Path]:
    """Per test patient: patch probabilities alone, with slide context, and the IDC-positive patches.

    Args:
      images: an evaluation's per-image rows (`path`, `patient_id`, `label`, `probability`,
        `context_probability`), IDC file names; rows without a position are left out.
      figures: the folder the PNGs go to.
      prefix: file name prefix of the PNGs (`<prefix>-<index>.png`, patients in sorted order).

    Returns:
      The written figures, one per patient.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from histopath.data import layouts
    from histopath.data.bags import IDC_PATCH_SIZE
    from histopath.evaluation.metrics import roc_auc

    figures.mkdir(parents=True, exist_ok=True)
    by_patient: Dict[str, List[tuple]] = {}
    for row in images:
        position = layouts.idc_patch_position(row["path"])
        if position is not None and "context_probability" in row:
            by_patient.setdefault(row["patient_id"], []).append(
                (position[1], position[2], row["probability"], row["context_probability"], row["label"]))
    written = []
    for index, (patient, rows) in enumerate(sorted(by_patient.items())):
        xs, ys, alone, context, labels = (np.array(column) for column in zip(*rows))
        columns, grid_rows = (xs - xs.min()) // IDC_PATCH_SIZE, (ys - ys.min()) // IDC_PATCH_SIZE
        panels = []
        for values in (alone, context, labels.astype(float)):
            grid = np.full((grid_rows.max() + 1, columns.max() + 1), np.nan)
            grid[grid_rows, columns] = values
            panels.append(grid)
        figure, axes = plt.subplots(1, 3, figsize=(13, 4.6))
        titles = (f"patch alone (AUC {roc_auc(labels, alone):.3f})",
                  f"slide context (AUC {roc_auc(labels, context):.3f})", "IDC-positive patches (truth)")
        for axis, grid, title in zip(axes, panels, titles):
            shown = axis.imshow(grid, cmap="magma", vmin=0.0, vmax=1.0, interpolation="nearest")
            axis.set_title(title, fontsize=10)
            axis.set_axis_off()
        figure.colorbar(shown, ax=axes, fraction=0.02, label="P(IDC)")
        figure.suptitle(f"IDC test patient {patient}: DenseNet201, {len(rows)} patches")
        path = figures / f"{prefix}-{index}.png"
        save_figure(figure, path, dpi=80)
        written.append(path)
    return written


def write_figures(ctx: Context, results: Dict[str, Any], figures: pathlib.Path) -> List[pathlib.Path]:
    """The report's figures: MIL slide heat-maps, slide-context maps and ROC curves."""
    written: List[pathlib.Path] = []
    idc, breakhis = results.get("idc"), results.get("breakhis")
    if idc:
        ev = idc["evaluations"]
        evaluation_json = ctx.step_dir("idc-densenet-eval") / "evaluation.json"
        if "densenet_context" in ev and evaluation_json.exists():
            written += slide_context_maps(json.loads(evaluation_json.read_text())["images"], figures,
                                          "idc-densenet-context")
        for prefix, paths in (("idc-slide", ev["mil"].get("heatmaps", [])),
                              ("idc-slide-tiles", ev["mil"].get("tile_heatmaps", [])),
                              ("idc-slide-tiles-context", ev.get("mil_tile_context", {}).get("heatmaps", []))):
            written += [copy_figure(path, figures, f"{prefix}-{index}.png", max_side=SLIDE_FIGURE_MAX_SIDE)
                        for index, path in enumerate(paths[:FIGURES_PER_KIND])]
        written.append(copy_figure(ev["densenet"]["plots"]["roc"], figures, "idc-densenet-roc.png"))
    if breakhis:
        written += [copy_figure(breakhis["evaluations"][kind]["plots"]["roc"], figures, f"breakhis-{kind}-roc.png")
                    for kind in ("densenet", "mil")]
    return written


def markdown(title: str, results: Dict[str, Any], file_tables: Sequence[Table]) -> str:
    """A generated markdown file: title, provenance line, then every table that has rows."""
    lines = [f"# {title}", "",
             f"Generated by `python -m bench.results` from [results.json](results.json) (git {results['git_commit']}, "
             f"{results['created']}); do not edit by hand. Findings: [../results.md](../results.md).", ""]
    for table in file_tables:
        if table.rows:
            lines += table.markdown() + [""]
    return "\n".join(lines)


def table_files(results: Dict[str, Any],
                invocation_minutes: Optional[float] = None) -> List[Tuple[str, str, List[Table]]]:
    """The generated markdown files: (file name, title, tables), in order."""
    return [("tables.md", "Results on the test patients", tables.result_tables(results)),
            ("patient_cv.md", "IDC patient-level cross-validation",
             cv_tables.cv_tables(results["idc"], results["targets"]) if "idc" in results else []),
            ("compute.md", "Compute", run_tables.compute_tables(results)),
            ("reproducibility.md", "Reproducing the results",
             run_tables.reproducibility_tables(results, invocation_minutes))]


def write_tables(results: Dict[str, Any], folder: pathlib.Path,
                 invocation_minutes: Optional[float] = None) -> List[pathlib.Path]:
    """Writes the `table_files` into `folder`; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, title, file_tables in table_files(results, invocation_minutes):
        target = folder / name
        write_text(target, markdown(title, results, file_tables))
        written.append(target)
    return written


def write_report(ctx: Context, results: Dict[str, Any], docs: pathlib.Path, started: float) -> List[pathlib.Path]:
    """Replaces DOCS/results/ with results.json, the figures and the tables.

    Args:
      ctx: the study's folders (figures are drawn from step outputs).
      results: every step result, as `run.main` collects them.
      docs: the docs folder (results/ is created in it).
      started: `time.perf_counter()` when the invocation began.

    Returns:
      The written files: results.json, the tables, the figures.
    """
    folder = docs / RESULTS_FOLDER
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    write_json(folder / "results.json", results)
    figures = write_figures(ctx, results, folder)
    written = write_tables(results, folder, (time.perf_counter() - started) / 60)
    return [folder / "results.json"] + written + figures
