"""The figures of `histopath evaluate` and of the run report (matplotlib, Agg backend):
ROC curves, reliability diagrams and accuracy against coverage. Paths may be local or URIs; a figure is written
whole (`fileio.write_bytes`).
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Any, Mapping, Optional

import numpy as np

from histopath import fileio

FIGURE_SIZE = (6.0, 6.0)  # inches
DPI = 110
LEVEL_STYLES = {"images": ("tab:blue", "-"), "patients": ("tab:red", "--")}


@dataclasses.dataclass
class RocCurve:
    """One ROC curve and its AUC.

    Attributes:
      fpr: false-positive rates (x), from 0 to 1.
      tpr: true-positive rates (y).
      auc: area under the curve, None when undefined.
      ci_low: lower end of the AUC's confidence interval, or None.
      ci_high: upper end, or None.
      n_items: number of images or patients behind the curve.
    """

    fpr: np.ndarray
    tpr: np.ndarray
    auc: Optional[float]
    ci_low: Optional[float] = None
    ci_high: Optional[float] = None
    n_items: int = 0


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: str) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    fileio.write_bytes(path, buffer.getvalue())


def plot_roc(curves: Mapping[str, RocCurve], path: str | os.PathLike, title: str = "") -> str:
    """Draws ROC curves (e.g. image- and patient-level) with the AUC in the legend.

    Args:
      curves: legend name ("images", "patients", ...) -> curve.
      path: PNG to write.
      title: figure title.

    Returns:
      The written path.
    """
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=FIGURE_SIZE)
    try:
        axes.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1, label="chance")
        for name, curve in curves.items():
            colour, style = LEVEL_STYLES.get(name, (None, "-"))
            if curve.auc is None or not np.all(np.isfinite(curve.fpr)) or not np.all(np.isfinite(curve.tpr)):
                axes.plot([], [], color=colour, linestyle=style, label=f"{name} (n={curve.n_items}): AUC undefined")
                continue
            interval = (f" [{curve.ci_low:.3f}, {curve.ci_high:.3f}]"
                        if curve.ci_low is not None and curve.ci_high is not None else "")
            axes.plot(curve.fpr, curve.tpr, color=colour, linestyle=style, linewidth=2, drawstyle="default",
                      label=f"{name} (n={curve.n_items}): AUC {curve.auc:.3f}{interval}")
        axes.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="1 - specificity (false-positive rate)",
                 ylabel="sensitivity (true-positive rate)", title=title or "ROC")
        axes.set_aspect("equal")
        axes.grid(alpha=0.3)
        axes.legend(loc="lower right", fontsize=8)
        _save(figure, os.fspath(path))
    finally:
        plt.close(figure)
    return os.fspath(path)


def plot_calibration(tables: Mapping[str, Mapping[str, Any]], path: str | os.PathLike, title: str = "") -> str:
    """Draws a reliability diagram with a histogram of the predicted probabilities.

    Args:
      tables: legend name -> `metrics.calibration_table` result ({"bins", "ece"}).
      path: PNG to write.
      title: figure title.

    Returns:
      The written path.
    """
    plt = _pyplot()
    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(FIGURE_SIZE[0], FIGURE_SIZE[1] * 1.25), sharex=True,
        gridspec_kw={"height_ratios": [3, 1]})
    try:
        top.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1, label="perfect calibration")
        names = list(tables)
        width = 1.0 / (len(next(iter(tables.values()))["bins"]) if tables else 10) / max(1, len(names))
        for index, (name, table) in enumerate(tables.items()):
            colour, style = LEVEL_STYLES.get(name, (None, "-"))
            filled = [b for b in table["bins"] if b["count"]]
            ece = table.get("ece")
            label = f"{name}" + (f" (ECE {ece:.3f})" if ece is not None else "")
            top.plot([b["mean_probability"] for b in filled], [b["fraction_malignant"] for b in filled],
                     color=colour, linestyle=style, marker="o", label=label)
            centres = np.array([(b["low"] + b["high"]) / 2 for b in table["bins"]])
            counts = np.array([b["count"] for b in table["bins"]], dtype=float)
            share = counts / counts.sum() if counts.sum() else counts
            bottom.bar(centres + (index - (len(names) - 1) / 2) * width, share, width=width,
                       color=colour, alpha=0.7, label=name)
        top.set(xlim=(0, 1), ylim=(-0.02, 1.02), ylabel="observed fraction malignant",
                title=title or "Calibration")
        top.grid(alpha=0.3)
        top.legend(loc="upper left", fontsize=8)
        bottom.set(xlabel="predicted probability of malignant", ylabel="share of items")
        bottom.grid(alpha=0.3)
        _save(figure, os.fspath(path))
    finally:
        plt.close(figure)
    return os.fspath(path)


@dataclasses.dataclass
class CoverageCurve:
    """Balanced accuracy on the answered cases against coverage (`models.abstention`).

    Attributes:
      coverage: shares answered (x).
      balanced_accuracy: balanced accuracy of the answered cases (y; None where undefined).
      operating_point: (coverage, balanced accuracy) of the model's band, or None.
    """

    coverage: list
    balanced_accuracy: list
    operating_point: Optional[tuple] = None


def plot_coverage(curves: Mapping[str, CoverageCurve], path: str | os.PathLike, title: str = "",
                  target: Optional[float] = None) -> str:
    """Draws accuracy against coverage, each curve's operating point marked.

    Args:
      curves: legend name ("images", "patients", a candidate, ...) -> curve.
      path: PNG to write.
      title: figure title.
      target: the band rule's target balanced accuracy (a dotted line), or None.

    Returns:
      The written path.
    """
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=FIGURE_SIZE)
    try:
        if target is not None:
            axes.axhline(target, color="0.6", linestyle=":", linewidth=1, label=f"target {target:g}")
        for name, curve in curves.items():
            colour, style = LEVEL_STYLES.get(name, (None, "-"))
            pairs = [(c, a) for c, a in zip(curve.coverage, curve.balanced_accuracy) if a is not None]
            line, = axes.plot([c for c, _ in pairs], [a for _, a in pairs], color=colour, linestyle=style,
                              marker=".", label=name)
            point = curve.operating_point
            if point is not None and point[1] is not None:
                axes.plot([point[0]], [point[1]], color=line.get_color(), marker="o", markersize=9,
                          linestyle="none", label=f"{name}: band, coverage {point[0]:.2f}, "
                                                  f"balanced acc. {point[1]:.3f}")
        axes.set(xlim=(1.01, 0.45), xlabel="coverage (share answered; the rest 'not sure')",
                 ylabel="balanced accuracy of the answered cases", title=title or "Accuracy against coverage")
        axes.grid(alpha=0.3)
        axes.legend(loc="lower left", fontsize=8)
        _save(figure, os.fspath(path))
    finally:
        plt.close(figure)
    return os.fspath(path)


def coverage_curves(abstention: Mapping[str, Any], levels: tuple = ("images", "patients")) -> dict:
    """`CoverageCurve`s of a `models.abstention` result ({"curve", "coverage", ...}), per level."""
    keys = {"images": ("coverage", "balanced_accuracy"),
            "patients": ("patient_coverage", "patient_balanced_accuracy")}
    curves = {}
    for level in levels:
        x, y = keys[level]
        curves[level] = CoverageCurve([p[x] for p in abstention["curve"]], [p[y] for p in abstention["curve"]],
                                      (abstention[x], abstention[y]) if abstention.get("low") is not None else None)
    return curves
