"""Patient-level splitting that is stable and balanced.

A patient's split never changes once assigned: the pipeline's span store records every
assignment (in the manifests of the spans it ingested) and a later span only places
patients it has not seen. New patients are placed class by class so that each split's
share of each class stays close to the whole, deterministically: within a class in the
order of a keyed hash of their ids (HMAC-SHA256 with the seed), each to the split that is
furthest below its fraction of that class (ties broken by the same hash). Before fractions count, the training split
gets a patient of each class, then every split a patient of each class while the class
has enough, then every split a patient at all. `balance` reports how far each split is
from the whole; `check_cohort` refuses a cohort too small to train and evaluate, naming
the minimum.
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
SPLIT_RULE = ("a patient keeps the split it was first given; new patients are placed class by class to "
              "keep each split's balance (data.split.assign_balanced)")
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


Assignment = Mapping[str, tuple[str, int]]  # patient -> (split, class) already placed


TRAIN_SPLIT = "train"  # the split the pipeline's Transform analyses and its Trainers learn from


def training_split(fractions: Mapping[str, float]) -> str:
    """The split models learn from: "train" when there is one, else the largest fraction
    (the first name on a tie)."""
    if TRAIN_SPLIT in fractions:
        return TRAIN_SPLIT
    return max(sorted(fractions), key=lambda name: fractions[name])


def assign_balanced(strata: Mapping[str, int], fractions: Mapping[str, float], seed: int,
                    fixed: Optional[Assignment] = None) -> dict[str, str]:
    """Places every patient of `strata` in a split (see the module docstring).

    Args:
      strata: patient id -> class (0 benign, 1 malignant: `patient_strata`).
      fractions: split name -> fraction (`parse_split_spec`).
      seed: key of the hash that orders the new patients.
      fixed: patients placed before (by earlier spans): they keep their split and count
        towards each split's balance.

    Returns:
      patient id -> split name, for every patient of `strata` (fixed ones included).
    """
    fixed = dict(fixed or {})
    names = sorted(fractions)
    train = training_split(fractions)
    counts = {name: collections.Counter() for name in names}  # split -> class -> patients
    for split, label in fixed.values():
        if split in counts:
            counts[split][int(label)] += 1
    result = {patient: fixed[patient][0] for patient in strata if patient in fixed}
    new = [patient for patient in strata if patient not in fixed]
    class_totals = collections.Counter(int(label) for _, label in fixed.values())
    class_totals.update(int(strata[patient]) for patient in new)
    scarce_first = sorted({int(strata[p]) for p in new}, key=lambda label: (class_totals[label], label))
    for label in scarce_first:
        members = sorted((p for p in new if int(strata[p]) == label), key=lambda p: patient_position(p, seed))
        enough = class_totals[label] >= len(names)
        for patient in members:
            def priority(name: str) -> tuple:
                lacks_class = counts[name][label] == 0
                return (not (lacks_class and name == train), not (lacks_class and enough),
                        sum(counts[name].values()) > 0,
                        round(counts[name][label] - fractions[name] * class_totals[label], 9),
                        patient_position(f"{patient}/{name}", seed))
            split = min(names, key=priority)
            counts[split][label] += 1
            result[patient] = split
    return result


def split_files(
    files: Iterable[ParsedFile], fractions: Mapping[str, float], seed: int,
    fixed: Optional[Assignment] = None,
) -> dict[str, list[ParsedFile]]:
    """Splits files by patient (`assign_balanced` over `patient_strata`).

    Returns:
      split name -> its files sorted by relative path (every split is present, maybe empty).
    """
    files = list(files)
    strata = {patient: label for patient, (label, _) in patient_strata(files).items()}
    assignment = assign_balanced(strata, fractions, seed, fixed)
    result: dict[str, list[ParsedFile]] = {name: [] for name in fractions}
    for file in sorted(files, key=lambda f: f.relative_path):
        result[assignment[file.patient_id]].append(file)
    return result


MIN_PATIENTS_PER_CLASS = 2


def check_cohort(splits: Mapping[str, Mapping], fractions: Mapping[str, float], where: str) -> None:
    """Refuses splits too small to train and evaluate, naming the minimum.

    Args:
      splits: split -> {"patient_labels": {patient: class}, "label_counts": {"benign": n,
        "malignant": n}} (a manifest's split entries, or `split_entry`).
      fractions: the split fractions.
      where: what the splits are of (a folder, "the training window"), for the message.

    Raises:
      DataError: a split without patients, or a training split without images of both
        classes (an IDC slide holds both; a BreakHis patient one).
    """
    train = training_split(fractions)
    empty = [name for name in sorted(fractions) if not splits.get(name, {}).get("patient_labels")]
    counts = splits.get(train, {}).get("label_counts", {})
    lacking = [name for name in ("benign", "malignant") if not counts.get(name)]
    if not empty and not lacking:
        return
    cohort: dict[str, int] = {}
    for entry in splits.values():
        cohort.update(entry.get("patient_labels", {}))
    benign = sum(1 for label in cohort.values() if not label)
    problem = (f"split(s) {', '.join(empty)} received no patient" if empty
               else f"the {train} split holds no {lacking[0]} image")
    raise DataError(
        f"{where}: {problem}: the cohort has {benign} benign and {len(cohort) - benign} malignant "
        f"patient(s); training and evaluating needs at least {MIN_PATIENTS_PER_CLASS} of each class and "
        f"{len(fractions) + 1} patients in all (one of each class to train, one for each other split)")


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
