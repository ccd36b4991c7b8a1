"""Patient-level splitting that never moves: a patient's split is a pure function of the
patient id and the seed.

Each patient id is hashed with the seed as key (HMAC-SHA256) into a number in [0, 1),
which falls into one of the splits by their fractions, the splits taken in the order of
their names. So the same patient lands in the same split in every span, every run
and on any machine, whatever other patients a folder holds; no patient is ever in two
splits. The share of patients per split follows the fractions only on average, and class
balance only as far as chance allows: `balance` reports how far each split is from the
whole, and ingestion refuses a split that received no patient.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import re
from typing import Iterable, Mapping, Optional, Sequence

from histopath.data.features import patient_sort_key
from histopath.data.layouts import ParsedFile
from histopath.errors import ConfigError, DataError

DEFAULT_SPLITS = {"train": 0.7, "eval": 0.15, "test": 0.15}
_SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def parse_split_spec(text: str | Mapping[str, float]) -> dict[str, float]:
    """Parses "train=0.7,eval=0.15,test=0.15" (or checks a mapping) into {name: fraction}.

    Raises:
      ConfigError: malformed entry, bad name, duplicate, fraction not in (0, 1], or
        fractions not summing to 1.
    """
    if isinstance(text, Mapping):
        items = [(str(k), v) for k, v in text.items()]
    else:
        items = []
        for entry in (e.strip() for e in text.split(",")):
            if not entry:
                continue
            name, sep, value = entry.partition("=")
            if not sep:
                raise ConfigError(f"split {entry!r} is not NAME=FRACTION")
            items.append((name.strip(), value.strip()))
    fractions: dict[str, float] = {}
    for name, value in items:
        if not _SPLIT_NAME.fullmatch(name):
            raise ConfigError(f"split name {name!r} must be letters, digits, '_' or '-'")
        if name in fractions:
            raise ConfigError(f"split {name!r} is given twice")
        try:
            fraction = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"fraction of split {name!r} is not a number: {value!r}") from None
        if not 0.0 < fraction <= 1.0:
            raise ConfigError(f"fraction of split {name!r} must be in (0, 1], got {fraction}")
        fractions[name] = fraction
    if not fractions:
        raise ConfigError("no split given")
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(f"split fractions must sum to 1, got {total:g}")
    return fractions


def patient_strata(files: Iterable[ParsedFile]) -> dict[str, tuple[int, int]]:
    """Per patient: (stratum, number of images). The stratum is the patient's highest
    label: BreakHis patients have one label; an IDC patient is 1 when any patch is positive.
    """
    stratum: dict[str, int] = {}
    count: collections.Counter = collections.Counter()
    for file in files:
        stratum[file.patient_id] = max(stratum.get(file.patient_id, 0), file.label)
        count[file.patient_id] += 1
    return {patient: (stratum[patient], count[patient]) for patient in stratum}


def patient_position(patient_id: str, seed: int) -> float:
    """The patient's place in [0, 1): HMAC-SHA256 of the id keyed by the seed."""
    digest = hmac.new(str(int(seed)).encode(), str(patient_id).encode("utf-8"), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_split(patient_id: str, fractions: Mapping[str, float], seed: int) -> str:
    """The split of one patient: a pure function of (patient id, seed, fractions)."""
    position = patient_position(patient_id, seed)
    names = sorted(fractions)  # a canonical order: the mapping's own order may not survive JSON
    cumulative = 0.0
    for name in names:
        cumulative += fractions[name]
        if position < cumulative:
            return name
    return names[-1]


def assign_patients(patients: Iterable[str], fractions: Mapping[str, float], seed: int) -> dict[str, str]:
    """patient id -> split name, for every patient (see `assign_split`)."""
    return {patient: assign_split(patient, fractions, seed) for patient in patients}


def split_files(
    files: Iterable[ParsedFile], fractions: Mapping[str, float], seed: int
) -> dict[str, list[ParsedFile]]:
    """Splits files by patient (`assign_split`).

    Returns:
      split name -> its files sorted by relative path (every split is present, maybe empty).
    """
    files = list(files)
    assignment = assign_patients({f.patient_id for f in files}, fractions, seed)
    result: dict[str, list[ParsedFile]] = {name: [] for name in fractions}
    for file in sorted(files, key=lambda f: f.relative_path):
        result[assignment[file.patient_id]].append(file)
    return result


def check_every_split_has_patients(split_to_files: Mapping[str, Sequence[ParsedFile]], seed: int,
                                   where: str) -> None:
    """Raises DataError naming the empty splits (with too few patients for the fractions)."""
    empty = [name for name, files in split_to_files.items() if not files]
    if empty:
        patients = len({f.patient_id for files in split_to_files.values() for f in files})
        raise DataError(
            f"{where}: split(s) {', '.join(empty)} received no patient: {patients} patient(s) are placed by a "
            f"hash of their id and the seed ({seed}), and none fell there; add patients, change the split "
            "fractions or choose another seed")


def split_entry(files: Sequence[ParsedFile]) -> dict:
    """A split's patients with their labels and its image counts by label (the manifest's
    "patient_labels" and "label_counts")."""
    strata = patient_strata(files)
    return {"patient_labels": {p: strata[p][0] for p in sorted(strata, key=patient_sort_key)},
            "label_counts": {"benign": sum(1 for f in files if not f.label),
                             "malignant": sum(1 for f in files if f.label)}}


def merge_split_entries(entries: Sequence[Mapping]) -> dict:
    """One split over several spans: patients (malignant if so in any span) and summed counts."""
    labels: dict[str, int] = {}
    counts = {"benign": 0, "malignant": 0}
    for entry in entries:
        for patient, label in entry.get("patient_labels", {}).items():
            labels[patient] = max(labels.get(patient, 0), int(label))
        for name in counts:
            counts[name] += int(entry.get("label_counts", {}).get(name, 0))
    return {"patient_labels": dict(sorted(labels.items(), key=lambda item: patient_sort_key(item[0]))),
            "label_counts": counts}


def balance(splits: Mapping[str, Mapping]) -> dict[str, dict]:
    """Per split: patients and images by label, and how far its malignant shares are from
    those of all splits together.

    Args:
      splits: split -> {"patient_labels": {patient: 0/1}, "label_counts": {"benign": n,
        "malignant": n}} (a manifest's split entries, or `split_entry`).

    Returns:
      split -> {"patients": {"benign", "malignant"}, "images": {...},
      "malignant_share_of_patients", "malignant_share_of_images" (None when empty) and
      "difference_from_all" of both shares (this split minus the whole)}.
    """
    def share(counts: Mapping[str, int]) -> Optional[float]:
        total = counts["benign"] + counts["malignant"]
        return round(counts["malignant"] / total, 4) if total else None

    patients = {name: {"benign": sum(1 for v in entry["patient_labels"].values() if not v),
                       "malignant": sum(1 for v in entry["patient_labels"].values() if v)}
                for name, entry in splits.items()}
    images = {name: {k: int(entry["label_counts"].get(k, 0)) for k in ("benign", "malignant")}
              for name, entry in splits.items()}
    whole_patients = {k: sum(c[k] for c in patients.values()) for k in ("benign", "malignant")}
    whole_images = {k: sum(c[k] for c in images.values()) for k in ("benign", "malignant")}
    result = {}
    for name in splits:
        entry = {"patients": patients[name], "images": images[name],
                 "malignant_share_of_patients": share(patients[name]),
                 "malignant_share_of_images": share(images[name])}
        entry["difference_from_all"] = {
            key: (None if entry[key] is None or whole is None else round(entry[key] - whole, 4))
            for key, whole in (("malignant_share_of_patients", share(whole_patients)),
                               ("malignant_share_of_images", share(whole_images)))}
        result[name] = entry
    return result
