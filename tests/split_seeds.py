"""A seed under which every split of a small test data set receives a patient.

A patient's split is a pure function of its id and the seed (`data.split.assign_split`),
so a handful of patients can leave a split empty, which ingestion refuses. Tests of
ingestion mechanics on a few patients pick their seed here.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from histopath.data.split import DEFAULT_SPLITS, assign_split


def seed_for_every_split(patient_ids: Iterable[str], fractions: Mapping[str, float] = DEFAULT_SPLITS,
                         start: int = 0) -> int:
    """The first seed from `start` that puts at least one of the patients in every split."""
    patients = sorted(set(patient_ids))
    for seed in range(start, start + 10_000):
        if {assign_split(p, fractions, seed) for p in patients} == set(fractions):
            return seed
    raise ValueError(f"no seed gives every split a patient among {patients}")
