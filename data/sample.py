"""A small SYNTHETIC data set in the real BreakHis or IDC layout (`histopath make-sample`).

Not real tissue: numpy-drawn H&E-like images for demos and tests that must run in minutes
without the real data. Light glass background, pink eosin stroma with fibrous texture,
purple-blue haematoxylin nuclei. Benign images have sparse, small, round, pale nuclei;
malignant ones dense, large, irregular (pleomorphic), dark (hyperchromatic) nuclei, so a
small CNN can learn the class. Per-patient stain variation keeps it from being trivial.

IDC patients are rendered as one whole-mount canvas cut into a contiguous grid of 50x50
patches (x/y offsets like the real names), with the positive patches clustered in a
tumour region, so spatial bags can be built.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
from PIL import Image

from histopath.data import layouts
from histopath.data.output_dir import check_output_free, make_work_dir, publish, remove_quietly

from histopath.errors import ConfigError

BREAKHIS_IMAGE_SIZE = (230, 150)  # width, height: BreakHis' 700x460 reduced ~3x
IDC_PATCH_SIZE = 50
DEFAULT_IMAGES_PER_PATIENT = {layouts.BREAKHIS: 8, layouts.IDC: 64}
_BENIGN_CODES = ("A", "F", "PT", "TA")
_MALIGNANT_CODES = ("DC", "LC", "MC", "PC")

_GLASS = np.array([0.96, 0.93, 0.95])
_EOSIN = np.array([0.90, 0.58, 0.74])
_CYTOPLASM = np.array([0.94, 0.74, 0.84])


@dataclasses.dataclass(frozen=True)
class NucleusStyle:
    """How the nuclei of one kind of tissue look.

    Attributes:
      pixels_per_nucleus: tissue area per nucleus (smaller = denser).
      radius: (min, max) nucleus radius in pixels at scale 1.
      elongation: (min, max) ratio of short to long axis (1 = round).
      irregularity: amplitude of the random wobble of the outline (0 = smooth ellipse).
      colour: RGB in [0, 1] of the nucleus centre.
      opacity: how strongly the nucleus covers the tissue below.
    """

    pixels_per_nucleus: float
    radius: tuple[float, float]
    elongation: tuple[float, float]
    irregularity: float
    colour: tuple[float, float, float]
    opacity: float


BENIGN_NUCLEI = NucleusStyle(900.0, (1.8, 3.0), (0.75, 1.0), 0.03, (0.50, 0.40, 0.70), 0.75)
MALIGNANT_NUCLEI = NucleusStyle(190.0, (3.0, 6.0), (0.5, 0.95), 0.14, (0.26, 0.14, 0.44), 0.92)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Low-frequency noise in [0, 1] with features about `cell` pixels wide."""
    grid = rng.random((max(2, int(height / cell) + 2), max(2, int(width / cell) + 2)))
    image = Image.fromarray(grid.astype(np.float32), mode="F")
    return np.asarray(image.resize((width, height), Image.BICUBIC), dtype=np.float64).clip(0, 1)


def _draw_nucleus(canvas, rng, cy, cx, style: NucleusStyle, scale: float, stain: np.ndarray):
    radius = rng.uniform(*style.radius) * scale
    aspect = rng.uniform(*style.elongation)
    angle = rng.uniform(0, math.pi)
    harmonics = rng.normal(0, style.irregularity, size=3)
    phases = rng.uniform(0, 2 * math.pi, size=3)
    extent = int(math.ceil(radius * (1 + 3 * style.irregularity) + 2))
    y0, y1 = max(0, int(cy) - extent), min(canvas.shape[0], int(cy) + extent + 1)
    x0, x1 = max(0, int(cx) - extent), min(canvas.shape[1], int(cx) + extent + 1)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    dy, dx = yy - cy, xx - cx
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = (-dx * math.sin(angle) + dy * math.cos(angle)) / aspect
    distance = np.hypot(u, v)
    theta = np.arctan2(v, u)
    outline = radius * (1 + sum(h * np.sin((k + 2) * theta + p)
                                for k, (h, p) in enumerate(zip(harmonics, phases))))
    alpha = np.clip(outline - distance + 0.5, 0, 1) * style.opacity
    # Chromatin texture: darker speckles inside the nucleus.
    colour = np.asarray(style.colour) * stain * rng.uniform(0.9, 1.1)
    speckle = 1 - 0.15 * rng.random(alpha.shape)
    patch = canvas[y0:y1, x0:x1]
    patch[:] = patch * (1 - alpha[..., None]) + (colour * speckle[..., None]) * alpha[..., None]


def render_tissue(
    rng: np.random.Generator,
    height: int,
    width: int,
    malignancy: np.ndarray | float,
    scale: float = 1.0,
    stain: np.ndarray | None = None,
) -> np.ndarray:
    """Draws an H&E-like image.

    Args:
      rng: random generator.
      height: image height in pixels.
      width: image width in pixels.
      malignancy: 0 benign / 1 malignant, for the whole image or per pixel
        (`(height, width)` array: where > 0.5 the nuclei are malignant).
      scale: nucleus size multiplier (higher magnification = larger nuclei).
      stain: per-channel multiplier of the stain colours (patient variation).

    Returns:
      uint8 RGB array `(height, width, 3)`.
    """
    stain = np.ones(3) if stain is None else stain
    malignancy_map = np.broadcast_to(np.asarray(malignancy, dtype=np.float64), (height, width))
    # Tissue vs glass (lumina, fat): tumour regions are more cellular, less empty.
    tissue = _smooth_noise(rng, height, width, 40 * scale)
    tissue_alpha = np.clip((tissue - 0.28 + 0.2 * malignancy_map) / 0.12, 0, 1)
    fibres = _smooth_noise(rng, height, width, 6 * scale)
    eosin = _EOSIN * stain
    stroma = eosin[None, None, :] * (0.92 + 0.16 * fibres[..., None])
    stroma = stroma * (1 - 0.4 * malignancy_map[..., None]) + (
        _CYTOPLASM * stain)[None, None, :] * 0.4 * malignancy_map[..., None]
    alpha = tissue_alpha[..., None]
    canvas = _GLASS[None, None, :] * (1 - alpha) + stroma * alpha

    for style, weight in ((BENIGN_NUCLEI, 1 - malignancy_map), (MALIGNANT_NUCLEI, malignancy_map)):
        tissue_area = float((weight > 0.5).sum() * tissue_alpha.mean())
        expected = tissue_area / (style.pixels_per_nucleus * scale**2)
        for _ in range(rng.poisson(max(expected, 0.0))):
            for _attempt in range(6):  # place nuclei on tissue of their own kind
                cy, cx = rng.uniform(0, height), rng.uniform(0, width)
                iy, ix = min(int(cy), height - 1), min(int(cx), width - 1)
                if weight[iy, ix] > 0.5 and tissue_alpha[iy, ix] > rng.uniform(0.2, 0.9):
                    _draw_nucleus(canvas, rng, cy, cx, style, scale, stain)
                    break
    canvas += rng.normal(0, 0.015, canvas.shape)
    return (np.clip(canvas, 0, 1) * 255 + 0.5).astype(np.uint8)


def _patient_ids(rng: np.random.Generator, count: int) -> list[str]:
    """`count` distinct random 5-digit patient ids (the first half become benign)."""
    ids: list[str] = []
    while len(ids) < count:
        candidate = str(int(rng.integers(10000, 99999)))
        if candidate not in ids:
            ids.append(candidate)
    return ids


def _stain(rng: np.random.Generator) -> np.ndarray:
    return np.clip(1 + rng.normal(0, 0.04, size=3), 0.85, 1.15)


def _save_png(array: np.ndarray, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array, mode="RGB").save(path, format="PNG")


def _write_breakhis(root: str, patients: int, images: int, seed: int) -> list[tuple[str, int]]:
    rng = np.random.default_rng(seed)
    ids = _patient_ids(rng, patients)
    width, height = BREAKHIS_IMAGE_SIZE
    written = []
    n_benign = patients // 2
    for index, patient in enumerate(ids):
        label = 0 if index < n_benign else 1
        codes = _BENIGN_CODES if label == 0 else _MALIGNANT_CODES
        rank = index if label == 0 else index - n_benign
        # The first patient of each class has two slides of different subtypes (like the
        # real 29960AB fibroadenoma / 29960CD adenosis): one patient, two slide ids.
        slides = [(f"{patient}AB", codes[rank % 4]), (f"{patient}CD", codes[(rank + 1) % 4])] \
            if rank == 0 and images >= 2 else [(patient, codes[rank % 4])]
        stain = _stain(rng)
        letter = "BM"[label]
        class_folder = ("benign", "malignant")[label]
        for slide_index, (slide, code) in enumerate(slides):
            count = images // len(slides) + (1 if slide_index < images % len(slides) else 0)
            for seq in range(1, count + 1):
                image_rng = np.random.default_rng([seed, index, slide_index, seq])
                image_stain = stain * np.clip(1 + image_rng.normal(0, 0.02, 3), 0.9, 1.1)
                pixels = render_tissue(image_rng, height, width, float(label), scale=1.0,
                                       stain=image_stain)
                relative = (
                    f"BreaKHis_v1/histology_slides/breast/{class_folder}/SOB/"
                    f"{layouts.BREAKHIS_SUBTYPES[code][0]}/SOB_{letter}_{code}_14-{slide}/200X/"
                    f"SOB_{letter}_{code}-14-{slide}-200-{seq:03d}.png"
                )
                _save_png(pixels, os.path.join(root, relative))
                written.append((relative, label))
    return written


def _write_idc(root: str, patients: int, patches: int, seed: int) -> list[tuple[str, int]]:
    rng = np.random.default_rng(seed)
    ids = _patient_ids(rng, patients)
    size = IDC_PATCH_SIZE
    written = []
    n_negative = patients // 2
    for index, patient in enumerate(ids):
        has_tumour = index >= n_negative
        cols = math.ceil(math.sqrt(patches))
        rows = math.ceil(patches / cols)
        patient_rng = np.random.default_rng([seed, index])
        height, width = rows * size, cols * size
        malignancy = np.zeros((height, width))
        if has_tumour:
            # One tumour region covering roughly a third of the slide.
            cy, cx = patient_rng.uniform(0.3, 0.7) * height, patient_rng.uniform(0.3, 0.7) * width
            radius = math.sqrt(0.33 * height * width / math.pi)
            yy, xx = np.mgrid[0:height, 0:width]
            wobble = 1 + 0.15 * _smooth_noise(patient_rng, height, width, 60)
            malignancy = (np.hypot(yy - cy, xx - cx) < radius * wobble).astype(np.float64)
        canvas = render_tissue(patient_rng, height, width, malignancy, scale=0.7,
                               stain=_stain(patient_rng))
        x_origin = 1 + size * int(patient_rng.integers(0, 40))
        y_origin = 1 + size * int(patient_rng.integers(0, 40))
        for cell in range(patches):
            r, c = divmod(cell, cols)
            tile = malignancy[r * size:(r + 1) * size, c * size:(c + 1) * size]
            label = int(tile.mean() > 0.5)
            x, y = x_origin + c * size, y_origin + r * size
            relative = f"{patient}/{label}/{patient}_idx5_x{x}_y{y}_class{label}.png"
            _save_png(canvas[r * size:(r + 1) * size, c * size:(c + 1) * size],
                      os.path.join(root, relative))
            written.append((relative, label))
    return written


def make_sample(
    dataset: str,
    output: str,
    patients: int = 12,
    images_per_patient: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> dict:
    """Writes a synthetic data set in the real layout of `dataset`.

    Args:
      dataset: "breakhis" (230x150 PNGs at 200X in the BreaKHis_v1 tree) or "idc"
        (50x50 patches, `<patient>/<class>/..._idx5_x<X>_y<Y>_class<C>.png`).
      output: folder to create (the BreakHis tree goes to `output/BreaKHis_v1/...`).
      patients: number of patients; the first half are benign (IDC: negative-only), the
        rest malignant (IDC: with a tumour region); the patient split gives every split
        one of each class from 3 of each (`split.assign_balanced`).
      images_per_patient: images (BreakHis) or patches (IDC) per patient; default 8 / 64.
      seed: the data set is a pure function of the arguments.
      overwrite: replace an existing `output`.

    Returns:
      Summary: {"dataset", "output", "patients", "images", "label_counts"}.

    Raises:
      ConfigError: unknown dataset or fewer than 2 patients.
      DataError: `output` exists and `overwrite` is False.
    """
    if dataset not in layouts.DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r} (expected breakhis or idc)")
    if patients < 2:
        raise ConfigError("make-sample needs at least 2 patients (one of each class)")
    images = images_per_patient or DEFAULT_IMAGES_PER_PATIENT[dataset]
    if images < 1:
        raise ConfigError("images per patient must be at least 1")
    if dataset == layouts.IDC and images < 4:
        raise ConfigError("IDC patients need at least 4 patches (a 2x2 grid)")
    output = os.path.abspath(output)
    check_output_free(output, overwrite)
    temp = make_work_dir(output)
    try:
        writer = _write_breakhis if dataset == layouts.BREAKHIS else _write_idc
        written = writer(temp, patients, images, seed)
        publish(temp, output, overwrite)
    except BaseException:
        remove_quietly(temp)
        raise
    labels = [label for _, label in written]
    return {
        "dataset": dataset,
        "output": output,
        "patients": patients,
        "images": len(written),
        "label_counts": {"benign": labels.count(0), "malignant": labels.count(1)},
    }
