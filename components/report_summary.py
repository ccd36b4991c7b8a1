"""The run report's human-readable parts: the Markdown summary, the ROC plot and the
accuracy-against-coverage plot of each candidate's "not sure" band."""

import json
from typing import Any

import numpy as np


def plot_roc(curves: dict[str, dict[str, Any]], path: str) -> None:
    """One ROC plot with a curve per candidate (`evaluation.plots`)."""
    from histopath.evaluation import plots

    roc_curves = {}
    for name, summary in curves.items():
        points = [(0.0, 0.0)] + [tuple(point) for point in summary["roc"]] + [(1.0, 1.0)]
        roc_curves[name] = plots.RocCurve(
            fpr=np.array([p[0] for p in points]), tpr=np.array([p[1] for p in points]),
            auc=summary["metrics"]["overall"].get("auc"),
            n_items=int(summary["metrics"]["overall"].get("example_count", 0)))
    plots.plot_roc(roc_curves, path, title="ROC on the test patients")


def plot_coverage(candidates: dict[str, dict[str, Any]], path: str) -> bool:
    """One accuracy-against-coverage plot (images) with a curve and the band's operating
    point per candidate that has a `model_info["abstention"]`; False when none has."""
    from histopath.evaluation import plots

    curves = {f"{name} ({block['chosen_on']})": plots.coverage_curves(block, ("images",))["images"]
              for name, candidate in candidates.items() if (block := candidate.get("abstention"))}
    if not curves:
        return False
    targets = {c["abstention"].get("target_balanced_accuracy") for c in candidates.values() if c.get("abstention")}
    plots.plot_coverage(curves, path, title="Accuracy against coverage on the held-out predictions",
                        target=targets.pop() if len(targets) == 1 else None)
    return True


def _abstention_lines(candidates: dict[str, dict[str, Any]]) -> list[str]:
    """A row per candidate: its "not sure" band and the operating point it was chosen at."""
    rows = {name: c["abstention"] for name, c in candidates.items() if c.get("abstention")}
    if not rows:
        return []
    lines = ["", "\"Not sure\" band (answers inside it need a pathologist's review), chosen on held-out "
             "predictions (cv: the cross-validated ones; eval: the eval split); accuracy against coverage in "
             "coverage.png:", "",
             "| model | chosen on | band | coverage | balanced acc. answered | patients answered | "
             "patients' balanced acc. answered | target reached |", "|---|---|---|---|---|---|---|---|"]
    for name, block in rows.items():
        band = "none" if block.get("low") is None else f"[{block['low']:.3f}, {block['high']:.3f}]"
        cells = [_number(block.get(key)) for key in ("coverage", "balanced_accuracy", "patient_coverage",
                                                     "patient_balanced_accuracy")]
        target = block.get("target_balanced_accuracy")
        reached = "-" if target is None else f"{'yes' if block.get('reached') else 'no'} ({target:g}, " \
            f"coverage >= {block.get('min_coverage', 0):g})"
        lines.append(f"| {name} | {block.get('chosen_on', '-')} | {band} | " + " | ".join(cells) + f" | {reached} |")
    return lines


def _resource_lines(candidates: dict[str, dict[str, Any]]) -> list[str]:
    """A row per candidate: its Trainer's wall time, CPU time and peak memory."""
    rows = {name: c["training_resources"] for name, c in candidates.items() if c.get("training_resources")}
    if not rows:
        return []
    lines = ["", "What each Trainer cost (the whole training: every fold, the refit and the threshold, not "
             "the export that follows; peak resident memory of the Trainer's process and its fold processes "
             "together; CPU time of both):", "",
             "| model | wall time | CPU time | peak memory | memory at start |", "|---|---|---|---|---|"]
    for name, used in rows.items():
        lines.append(f"| {name} | {_duration(used['wall_seconds'])} | {_duration(used['cpu_seconds'])} | "
                     f"{used['peak_rss_bytes'] / 2**30:.2f} GiB | {used['start_rss_bytes'] / 2**30:.2f} GiB |")
    return lines


def _duration(seconds: float) -> str:
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def render_summary(report: dict[str, Any]) -> str:
    """The human-readable summary (Markdown)."""
    lines = [f"# histopath run report — {report['created']}", ""]
    data = report.get("data")
    if data:
        lines += _data_lines(data) + [""]
    if not report.get("retrained", True):
        lines.append(f"No retraining: {report['reason']}. Nothing was pushed.")
        return "\n".join(lines) + "\n"
    lines.append(f"Winner: **{report['winner'] or 'none'}** — {report['reason']}")
    pushed = report["pushed"]
    if pushed["pushed"]:
        lines.append(f"Pushed: {pushed['destination']} (version {pushed['version']})")
    elif report.get("already_serving"):
        lines.append("Pushed: nothing new (the winner is the model pushed last)")
    else:
        lines.append("Pushed: nothing (no blessed winner)")
    lines += ["", "| model | blessed | test patients (benign / malignant) | images | AUC | balanced acc. | "
              "sensitivity | specificity |", "|---|---|---|---|---|---|---|---|"]
    warnings = []
    for name, candidate in report["candidates"].items():
        m, intervals = candidate["metrics"]["overall"], candidate.get("intervals", {})
        patients = candidate.get("test_patients", {})
        cells = [_with_interval(m.get(key), intervals.get(metric))
                 for key, metric in (("auc", "auc"), ("balanced_accuracy", "balanced_accuracy"),
                                     ("recall", "sensitivity"), ("specificity", "specificity"))]
        images = candidate.get("test_images") or {}
        if 0 in images.values():  # TFMA reports 0 for what a one-class split leaves undefined
            cells[:2] = ["undefined (one class)"] * 2
            cells[2 if images.get("malignant") == 0 else 3] = "-"
        if candidate.get("judged_on"):
            warnings.append(f"{name} was judged on {candidate['judged_on']}")
        count = m.get("example_count")
        lines.append(f"| {name} | {'yes' if candidate['blessed'] else 'no'} | "
                     f"{patients.get('benign', '-')} / {patients.get('malignant', '-')} | "
                     f"{'-' if count is None else f'{count:.0f}'} | " + " | ".join(cells) + " |")
        warnings += candidate.get("warnings", [])  # the candidates share the test patients
    lines += ["", "Figures on the test patients with 95 % patient-bootstrap intervals."]
    validated = {name: c["cross_validation"] for name, c in report["candidates"].items() if c.get("cross_validation")}
    if validated:
        lines += ["", f"Chosen by {report.get('rule', 'test_auc')} on the cross-validated predictions of the train "
                  "and eval patients:", "", "| model | patients | images | cross-validated AUC |", "|---|---|---|---|"]
        for name, cv in validated.items():
            interval = cv.get("auc_ci")
            lines.append(f"| {name} | {cv['patients']} | {cv['images']} | {cv['auc']:.3f}"
                         + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "") + " |")
            warnings += [f"{name} cross-validation: {warning}" for warning in cv.get("warnings", [])]
    lines += _abstention_lines(report["candidates"])
    lines += _resource_lines(report["candidates"])
    lines += [f"Warning: {warning}" for warning in dict.fromkeys(warnings)]
    anomalies = report["anomalies"]
    lines += ["", "Data anomalies: " + ("none" if not anomalies else json.dumps(anomalies))]
    return "\n".join(lines) + "\n"


def _with_interval(value: float | None, interval: dict[str, Any] | None) -> str:
    if value is None:
        return "-"
    if interval and interval.get("ci_low") is not None:
        return f"{value:.3f} [{interval['ci_low']:.3f}, {interval['ci_high']:.3f}]"
    return f"{value:.3f}"


def _slide_lines(data: dict[str, Any]) -> list[str]:
    """Slides: the tiling and each slide's tiles kept and dropped, by reason."""
    rows = [(span, slide) for span in data["window"] for slide in span.get("slides", [])]
    if not rows:
        return []
    tiling = rows[0][0]["tiling"]
    reasons = sorted({reason for _, slide in rows for reason in (slide["qc"] or {}).get("dropped", {})})
    lines = ["", f"Slides tiled at {tiling['tile_um']:g} µm in {tiling['tile_px']} px tiles "
                 f"({tiling['mpp']:g} µm/px):", "",
             "| span | slide | patient | split | tiles | kept | " + " | ".join(f"dropped: {r}" for r in reasons) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(reasons)]
    for span, slide in rows:
        qc = slide["qc"] or {}
        lines.append(f"| {span['span']} | {slide['slide_id']} | {slide['patient']} | {slide['split']} | "
                     f"{qc.get('total', 0)} | {qc.get('kept', 0)} | "
                     + " | ".join(str(qc.get("dropped", {}).get(r, 0)) for r in reasons) + " |")
    return lines


def _data_lines(data: dict[str, Any]) -> list[str]:
    """Spans, what was new, and the patients per split with their class balance."""
    lines = ["| span | images | new this run |", "|---|---|---|"]
    for span in data["window"]:
        lines.append(f"| {span['span']} | {span['examples']} | {'yes' if span['ingested_now'] else 'no'} |")
    skipped = sum(len(span["skipped"]) for span in data["window"])
    if skipped:
        lines += ["", f"Skipped files: {skipped} (listed in ingest_report.json)"]
    lines += _slide_lines(data)
    lines += ["", "| split | patients (benign / malignant) | images (benign / malignant) | malignant share vs all |",
              "|---|---|---|---|"]
    for name, entry in data["balance"].items():
        difference = entry["difference_from_all"]["malignant_share_of_images"]
        lines.append(f"| {name} | {entry['patients']['benign']} / {entry['patients']['malignant']} | "
                     f"{entry['images']['benign']} / {entry['images']['malignant']} | "
                     + ("-" if difference is None else f"{difference:+.3f}") + " |")
    return lines


