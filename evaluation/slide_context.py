"""Slide context: each patch's probability averaged with its neighbours' on the slide.

An IDC patch is 50 x 50 pixels of a whole-mount slide, and tumour comes in regions many
patches wide: a patch surrounded by confident IDC-positive patches is likely positive even
when the model, seeing the patch alone, is unsure. When the patches of a slide are
predicted together and their positions are known (the IDC file names carry them), each
patch's probability is replaced by the Gaussian-weighted mean of the probabilities of the
patches around it, itself included. Patches absent from the slide (glass the data set
left out) take no part: the mean is over the patches present.

Only probabilities and positions are used, never labels, so a slide of a new patient can
be scored this way. How much it helps, and the width, were measured by patient-level
cross-validation (docs/results.md).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage

from histopath.errors import DataError

TRUNCATE = 3.0  # the Gaussian is cut at this many sigmas

RULE = ("slide context: each patch's probability replaced by the Gaussian-weighted mean "
        "(sigma in patch widths) of the probabilities of the patches of the same patient "
        "around it, itself included; absent patches take no part")


def grid_step(xs: Sequence[int], ys: Sequence[int], patient_ids: Sequence[str]) -> int:
    """The patch pitch of the slides: the gcd of every offset from a patient's first patch.

    IDC patches lie on a 50-pixel grid (`ingest --bag-size K` regions on a K*50 one).

    Raises:
      DataError: fewer than two distinct positions (no pitch can be read).
    """
    xs, ys = np.asarray(xs, np.int64), np.asarray(ys, np.int64)
    patients = np.asarray(patient_ids).astype(str)
    step = 0
    for patient in np.unique(patients):
        mine = patients == patient
        offsets = np.concatenate([xs[mine] - xs[mine].min(), ys[mine] - ys[mine].min()])
        step = math.gcd(step, int(np.gcd.reduce(offsets))) if offsets.size else step
    if step <= 0:
        raise DataError("slide context needs at least two patches at different positions of one slide")
    return step


def _blur(grid: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with zeros outside the grid (cut at `TRUNCATE` sigmas)."""
    return ndimage.gaussian_filter(grid, sigma, mode="constant", cval=0.0, truncate=TRUNCATE)


def smooth_slide_scores(
    scores: Sequence[float],
    patient_ids: Sequence[str],
    xs: Sequence[int],
    ys: Sequence[int],
    sigma: float,
    step: int | None = None,
) -> np.ndarray:
    """Each patch's probability → Gaussian-weighted mean over its slide neighbourhood.

    Args:
      scores: per patch, the model's probability.
      patient_ids: per patch, its patient (one slide per patient).
      xs, ys: per patch, its offset in the slide in pixels (`features.PATCH_X/Y`).
      sigma: the Gaussian's width in patches; 0 returns the scores unchanged.
      step: the patch pitch in pixels; None = `grid_step` of the positions.

    Returns:
      float64 `(n,)`, in the input order; each value lies within the range of the scores
      it averages.

    Raises:
      DataError: inputs of different lengths, a negative sigma, or two patches of one
        patient at the same position.
    """
    scores = np.asarray(scores, np.float64)
    xs, ys = np.asarray(xs, np.int64), np.asarray(ys, np.int64)
    patients = np.asarray(patient_ids).astype(str)
    if not (len(scores) == len(patients) == len(xs) == len(ys)):
        raise DataError("scores, patient ids and positions must be of one length")
    if sigma < 0:
        raise DataError(f"slide context sigma must be >= 0, got {sigma}")
    if sigma == 0 or not len(scores):
        return scores.copy()
    step = step or grid_step(xs, ys, patients)
    smoothed = np.empty_like(scores)
    for patient in np.unique(patients):
        mine = np.flatnonzero(patients == patient)
        columns = (xs[mine] - xs[mine].min()) // step
        rows = (ys[mine] - ys[mine].min()) // step
        values = np.zeros((rows.max() + 1, columns.max() + 1))
        present = np.zeros_like(values)
        np.add.at(present, (rows, columns), 1.0)
        if present.max() > 1:
            raise DataError(f"patient {patient}: two patches at the same slide position")
        values[rows, columns] = scores[mine]
        weighted, weights = _blur(values, sigma), _blur(present, sigma)
        smoothed[mine] = weighted[rows, columns] / weights[rows, columns]
    return smoothed


def eval_split_setting(
    labels: Sequence[int],
    scores: Sequence[float],
    patient_ids: Sequence[str],
    xs: Sequence[int],
    ys: Sequence[int],
    sigma: float,
) -> dict:
    """A model's slide-context setting, chosen on its eval split (stored in `model_info`).

    Args:
      labels, scores: the eval images' labels and probabilities (as the model answers).
      patient_ids, xs, ys: their patients and slide positions.
      sigma: the Gaussian's width in patches (`smooth_slide_scores`).

    Returns:
      sigma, grid_step, rule, the decision threshold of maximum balanced accuracy on the
      smoothed eval probabilities, the eval AUC with and without slide context, and the
      number of eval patients.
    """
    from histopath.evaluation import operating_point
    from histopath.evaluation.metrics import roc_auc

    step = grid_step(xs, ys, patient_ids)
    smoothed = smooth_slide_scores(scores, patient_ids, xs, ys, sigma, step)
    return {"sigma": float(sigma), "grid_step": int(step), "rule": RULE,
            "decision_threshold": float(operating_point.balanced_accuracy_threshold(labels, smoothed)),
            "eval_auc": roc_auc(labels, smoothed), "eval_auc_without": roc_auc(labels, scores),
            "eval_patients": len(set(map(str, patient_ids)))}
