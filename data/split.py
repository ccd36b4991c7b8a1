"""Patient-disjoint, label-stratified, seeded train/eval/test splitting.

The split is computed from parsed file names only. Each patient gets a stratum (BreakHis:
the patient's label; IDC: whether the patient has any positive patch); within a stratum the
patients are shuffled with the seed and assigned greedily, one by one, to the split whose
image count is furthest below its target (fraction x images of the stratum). Image counts
therefore track the fractions while no patient is ever in two splits. Every split gets at
least one patient of a stratum that has at least as many patients as there are splits, and
at least one patient overall.
"""

from __future__ import annotations

import collections
import random
import re
from typing import Iterable, Mapping

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


def assign_patients(
    patients: Mapping[str, tuple[int, int]], fractions: Mapping[str, float], seed: int
) -> dict[str, str]:
    """Assigns every patient to one split.

    Args:
      patients: patient id -> (stratum, number of images).
      fractions: split name -> target fraction of the images (sums to 1).
      seed: seed of the shuffle; the result depends only on the seed and the contents of
        `patients` and `fractions`, not on their order.

    Returns:
      patient id -> split name.

    Raises:
      DataError: fewer patients than splits.
    """
    split_names = list(fractions)
    if len(patients) < len(split_names):
        raise DataError(
            f"{len(patients)} patient(s) cannot be split patient-disjointly into "
            f"{len(split_names)} splits ({', '.join(split_names)}): need at least "
            f"{len(split_names)} patients"
        )
    rng = random.Random(seed)
    by_stratum: dict[int, list[str]] = collections.defaultdict(list)
    for patient in sorted(patients):
        by_stratum[patients[patient][0]].append(patient)

    assignment: dict[str, str] = {}
    patients_in_split = {name: 0 for name in split_names}
    for stratum in sorted(by_stratum):
        members = by_stratum[stratum]
        rng.shuffle(members)
        stratum_images = sum(patients[p][1] for p in members)
        target = {name: fractions[name] * stratum_images for name in split_names}
        assigned_images = {name: 0 for name in split_names}
        assigned_patients = {name: 0 for name in split_names}
        cover_stratum = len(members) >= len(split_names)
        for index, patient in enumerate(members):
            candidates = split_names
            if cover_stratum:
                empty = [n for n in split_names if assigned_patients[n] == 0]
                if empty:
                    candidates = empty
            else:
                # Too few patients to cover every split in this stratum; make sure at
                # least that no split stays empty overall when enough patients remain.
                remaining = sum(len(v) for s, v in by_stratum.items() if s > stratum)
                remaining += len(members) - index
                empty = [n for n in split_names if patients_in_split[n] == 0]
                if empty and remaining <= len(empty):
                    candidates = empty
            # Largest deficit first; ties go to the split listed first.
            chosen = max(candidates, key=lambda n: (target[n] - assigned_images[n],
                                                    -split_names.index(n)))
            assignment[patient] = chosen
            assigned_images[chosen] += patients[patient][1]
            assigned_patients[chosen] += 1
            patients_in_split[chosen] += 1
    return assignment


def split_files(
    files: Iterable[ParsedFile], fractions: Mapping[str, float], seed: int
) -> dict[str, list[ParsedFile]]:
    """Splits files by patient; see `assign_patients`.

    Returns:
      split name -> its files sorted by relative path (every split is present).
    """
    files = list(files)
    assignment = assign_patients(patient_strata(files), fractions, seed)
    result: dict[str, list[ParsedFile]] = {name: [] for name in fractions}
    for file in sorted(files, key=lambda f: f.relative_path):
        result[assignment[file.patient_id]].append(file)
    return result
