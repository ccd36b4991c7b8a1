"""Patient-level cross-validation of a candidate, and the refit on every usable patient.

The train and eval patients are cut into `folds` label-stratified groups; for each group a
model is trained exactly as the Trainer trains (`training.train_model`, with an inner eval
split of the remaining patients for early stopping and learning-rate decay) and predicts
the group as the exported model does. Every train/eval patient thus gets predictions from a
model that never saw it: the cross-validated AUC (with a patient-bootstrap interval) is
what `SelectWinner` compares, and the cross-validated predictions choose the decision
threshold. With `refit_on_all`, the model that is exported is then trained on every
train/eval patient for the epoch count the folds kept. The test split is never read.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from typing import Any, Callable, Dict, Iterable, List, Mapping, Sequence

import numpy as np

from histopath.errors import DataError
from histopath.evaluation import scoring
from histopath.evaluation.operating_point import balanced_accuracy_threshold
from histopath.models import registry
from histopath.models.config import TrainingConfig
from histopath.models.datasets import PatientExamples, array_dataset, predict_arrays
from histopath.models.export import make_predictor
from histopath.models.isolation import run_in_child
from histopath.models.training import train_model

logger = logging.getLogger(__name__)

# Written into the Model artifact beside Format-Serving: the per-image cross-validated
# predictions `SelectWinner` compares.
PREDICTIONS_FILE = "cross_validation.json"
INNER_EVAL_FRACTION = 0.18  # of a fold's training patients: eval / (train + eval) of the default split
BOOTSTRAP_RESAMPLES = 1000


def positive_shares(patients: Sequence[str], labels: Sequence[int]) -> Dict[str, float]:
    """Each patient's share of malignant (IDC-positive) images."""
    totals: Dict[str, List[int]] = {}
    for patient, label in zip(patients, labels):
        counts = totals.setdefault(str(patient), [0, 0])
        counts[0] += int(label)
        counts[1] += 1
    return {patient: positives / count for patient, (positives, count) in totals.items()}


def _single_label_patients(shares: Iterable[float]) -> bool:
    """True when every patient's images share one label (BreakHis), False when some
    patients hold both (IDC slides: positive and negative patches)."""
    return all(share in (0.0, 1.0) for share in shares)


def plan_folds(patients: Sequence[str], labels: Sequence[int], folds: int) -> tuple[int, bool, List[str]]:
    """How many folds the cohort allows, whether they can be stratified, and warnings.

    Single-label patients (BreakHis) are stratified by class: with fewer patients of a
    class than `folds`, the folds drop to that count (at least 2); with a single patient
    of a class, folds are dealt without stratification (some folds then lack a class).
    Patients holding both labels (IDC) are stratified by their positive share.

    Raises:
      DataError: fewer than 2 patients (no fold could be held out).
    """
    shares = positive_shares(patients, labels)
    if len(shares) < 2:
        raise DataError(f"cross-validation needs at least 2 patients, the train and eval splits have {len(shares)}")
    warnings: List[str] = []
    if not _single_label_patients(shares.values()):
        if len(shares) < folds:
            warnings.append(f"{folds}-fold cross-validation asked for, {len(shares)} patients: "
                            f"{len(shares)} folds")
        return min(folds, len(shares)), True, warnings
    fewest = min(sum(1 for v in shares.values() if v == label) for label in (0, 1))
    if fewest >= folds:
        return folds, True, warnings
    if fewest >= 2:
        warnings.append(f"{folds}-fold cross-validation asked for, the smaller class has {fewest} patients: "
                        f"{fewest} folds")
        return fewest, True, warnings
    used = min(folds, len(shares))
    warnings.append(f"{used} folds without every class in each: the train and eval splits have {fewest} patient(s) "
                    "of one class, so the cross-validated figures are rough")
    return used, False, warnings


def stratified_patient_folds(patients: Sequence[str], labels: Sequence[int], folds: int,
                             seed: int, stratify: bool = True) -> List[List[str]]:
    """Cuts the patients into `folds` groups with their labels spread evenly.

    Patients with a single label (BreakHis) are dealt class by class, so every fold holds
    malignant and benign patients (`stratify`; without it they are dealt in one random
    order). Patients holding both labels (IDC) are stratified by their share of positive
    images: ranked by it, each run of `folds` neighbours goes one to each fold, in random
    order. `plan_folds` says how many folds a cohort allows.

    Raises:
      DataError: fewer patients (of a class, for stratified single-label patients) than folds.
    """
    shares = positive_shares(patients, labels)
    rng = np.random.default_rng(seed)
    groups: List[List[str]] = [[] for _ in range(folds)]
    if not _single_label_patients(shares.values()):
        if len(shares) < folds:
            raise DataError(f"{folds}-fold cross-validation needs at least {folds} patients, the train and "
                            f"eval splits have {len(shares)}")
        members = sorted(shares)
        rng.shuffle(members)
        members.sort(key=lambda patient: shares[patient])  # stable: ties stay in random order
        for start in range(0, len(members), folds):
            block = members[start:start + folds]
            for patient, group in zip(block, rng.permutation(folds)):
                groups[group].append(patient)
        return [sorted(group) for group in groups]
    offset = 0
    for label in ((1, 0) if stratify else (None,)):
        members = sorted(p for p, value in shares.items() if label is None or value == label)
        if len(members) < folds:
            raise DataError(f"{folds}-fold cross-validation needs at least {folds} "
                            f"{('benign', 'malignant')[label] if label is not None else ''} patients, the train "
                            f"and eval splits have {len(members)}")
        rng.shuffle(members)
        for index, patient in enumerate(members):
            groups[(offset + index) % folds].append(patient)
        offset += len(members)
    return [sorted(group) for group in groups]


def inner_eval_patients(train_patients: Sequence[str], shares: Mapping[str, float], seed: int) -> List[str]:
    """The patients of a fold's training patients that early stopping and the learning-rate
    schedule watch: `INNER_EVAL_FRACTION` of them, at least one of each class that has two
    or more (single-label patients) or one from each stratum of the positive share
    (patients with both labels; at most half of them, so most still train). Empty when
    there are too few to spare one."""
    rng = np.random.default_rng(seed)
    if not _single_label_patients(shares[p] for p in train_patients):
        ranked = sorted(sorted(train_patients), key=lambda patient: shares[patient])
        strata_count = min(max(2, round(INNER_EVAL_FRACTION * len(ranked))), len(ranked) // 2)
        if strata_count < 1:
            return []
        strata = np.array_split(np.array(ranked), strata_count)
        return sorted(str(rng.choice(stratum)) for stratum in strata if len(stratum))
    chosen: List[str] = []
    for label in (1, 0):
        members = sorted(p for p in train_patients if shares[p] == label)
        rng.shuffle(members)
        if len(members) >= 2:  # a class's only patient stays in training
            chosen += members[:max(1, round(INNER_EVAL_FRACTION * len(members)))]
    return sorted(chosen)


def kept_epochs(history: Mapping[str, list]) -> Dict[str, int]:
    """Per phase, the epochs whose training is in the weights the fit ended with: up to the
    best epoch early stopping watched, none of a phase that was dropped (`training`'s
    "kept" column)."""
    kept: Dict[str, int] = {}
    for phase, epoch_kept in zip(history["phase"], history["kept"]):
        kept[phase] = kept.get(phase, 0) + int(epoch_kept)
    return kept


def fixed_epochs(config: TrainingConfig, kept: Mapping[str, int]) -> TrainingConfig:
    """`config` for a refit: the kept epoch counts, nothing stopped early or restored (the
    refit has no patients left to watch)."""
    return dataclasses.replace(
        config,
        epochs=int(kept.get("head", kept.get("train", 0))) if config.epochs else 0,
        fine_tune_epochs=int(kept.get("fine_tune", 0)) if config.fine_tune_epochs else 0,
        keep_best_epoch=False,
    )


@dataclasses.dataclass
class Trainer:
    """Trains and predicts one model kind on in-memory patients.

    Args:
      model_config: the model's settings (its type names the kind, `models.registry`).
      training_config: the training settings.
      log_dir: TensorBoard folder (one subfolder per fit).
    """

    model_config: Any
    training_config: TrainingConfig
    log_dir: str

    def fit(self, data: PatientExamples, train_patients: Sequence[str], eval_patients: Sequence[str],
            config: TrainingConfig | None, name: str):
        """A model trained on `train_patients` watching `eval_patients`; (model, history).

        Keras' global state and the previous fits' garbage are cleared first: a Trainer fits
        one model per fold (and per refit) in one process.
        """
        import tf_keras as keras

        keras.backend.clear_session()
        gc.collect()
        config = config or self.training_config
        size = int(self.model_config.image_size)
        train = np.isin(data.patients, list(train_patients))
        watch = np.isin(data.patients, list(eval_patients))
        keras.utils.set_random_seed(config.seed)
        model = registry.kind_of(self.model_config).module().build(self.model_config)
        history = train_model(
            model, array_dataset(data.images[train], data.labels[train], size, config.batch_size, True, config.seed),
            array_dataset(data.images[watch], data.labels[watch], size, config.batch_size, False, 0),
            self.model_config, config, f"{self.log_dir}/{name}")
        return model, history

    def predict(self, model, images: np.ndarray) -> np.ndarray:
        return predict_arrays(make_predictor(model, self.model_config.test_time_augmentation), images,
                              int(self.model_config.image_size))


def fold_predictions(trainer: Trainer, data: PatientExamples, groups: Sequence[Sequence[str]], index: int,
                     seed: int, refit: bool = False, fold_processes: bool = False) -> Dict[str, Any]:
    """Fold `index`: a model trained on the other groups (an inner eval split of them
    watched), predicting group `index`; with `refit`, also the refit recipe's model (all
    the other groups, the epochs the first one kept).

    With `fold_processes` each of the two models is fitted in its own child process
    (`isolation`): memory is given back after each fit, so a fold's peak is one model's.

    Returns:
      {"held_out", "inner_eval", "kept_epochs", "probability" (the fold model's, of the
      held-out images in `data` order)} and, with `refit`, "refit_probability" (the refit
      model's, the same images).
    """
    call = run_in_child if fold_processes else _call
    result = call(fold_model_predictions, trainer, data, groups, index, seed)
    if refit:
        result["refit_probability"] = call(fold_refit_predictions, trainer, data, result, index)
    return result


def _call(function: Callable[..., Any], *args: Any) -> Any:
    return function(*args)


def fold_model_predictions(trainer: Trainer, data: PatientExamples, groups: Sequence[Sequence[str]], index: int,
                           seed: int) -> Dict[str, Any]:
    """`fold_predictions` without the refit: the fold model and its held-out probabilities."""
    shares = positive_shares(data.patients, data.labels)
    held_out = list(groups[index])
    rest = [p for p in sorted(shares) if p not in held_out]
    watch = inner_eval_patients(rest, shares, seed + index)
    learn = [p for p in rest if p not in watch]
    if not watch:  # every class has one patient here: they all train, and are watched too
        logger.warning("fold %d: too few patients for an inner eval split; early stopping watches the "
                       "training patients", index + 1)
        learn = watch = rest
    model, history = trainer.fit(data, learn, watch, None, f"fold-{index}")
    mask = np.isin(data.patients, held_out)
    return {"held_out": held_out, "inner_eval": watch,
            "kept_epochs": kept_epochs(history),
            "probability": trainer.predict(model, data.images[mask]).tolist()}


def fold_refit_predictions(trainer: Trainer, data: PatientExamples, fold: Mapping[str, Any], index: int) -> list:
    """The refit recipe of a fold (`fold_model_predictions`' result): trained on every
    patient outside `fold["held_out"]` for the epochs the fold model kept; the held-out
    images' probabilities."""
    mask = np.isin(data.patients, fold["held_out"])
    rest = sorted(set(data.patients[~mask]))
    refit_model, _ = trainer.fit(data, rest, fold["inner_eval"],
                                 fixed_epochs(trainer.training_config, fold["kept_epochs"]), f"refit-{index}")
    return trainer.predict(refit_model, data.images[mask]).tolist()


def cross_validate(trainer: Trainer, data: PatientExamples, folds: int, seed: int,
                   refit: bool = False, fold_processes: bool = True) -> Dict[str, Any]:
    """Cross-validated predictions of every patient in `data` (see the module docstring);
    with `refit`, of the refit recipe (`fold_predictions`).

    With `fold_processes` each fit is made in a child process (`isolation`), so the
    memory of its model is given back when it ends instead of adding up across fits.

    Returns:
      {"folds": [{"held_out", "inner_eval", "kept_epochs"}] (as many as `plan_folds`
      allows), "probability": per image, "threshold": balanced-accuracy threshold of the
      pooled predictions, "metrics": the image- and patient-level scores with
      patient-bootstrap intervals, "patients", "warnings": how the folds were adapted}.
    """
    folds, stratify, warnings = plan_folds(data.patients, data.labels, folds)
    for warning in warnings:
        logger.warning("cross-validation: %s", warning)
    groups = stratified_patient_folds(data.patients, data.labels, folds, seed, stratify)
    probability = np.full(len(data.labels), np.nan)
    rows = []
    for index in range(folds):
        fold = fold_predictions(trainer, data, groups, index, seed, refit, fold_processes)
        probability[np.isin(data.patients, fold["held_out"])] = fold["refit_probability" if refit else "probability"]
        rows.append({key: value for key, value in fold.items() if not key.endswith("probability")})
        logger.info("fold %d/%d: %d patients held out, kept %s", index + 1, folds, len(groups[index]),
                    fold["kept_epochs"])
    return {"folds": rows, "probability": probability, "patients": len(set(data.patients)),
            "warnings": warnings, **summarize(data, probability, seed)}


def summarize(data: PatientExamples, probability: np.ndarray, seed: int) -> Dict[str, Any]:
    """The threshold (best balanced accuracy) and the scores of cross-validated predictions."""
    threshold = balanced_accuracy_threshold(data.labels, probability)
    metrics = scoring.score_predictions(data.labels, probability, (probability >= threshold).astype(int),
                                        data.patients, threshold=threshold, bootstrap=BOOTSTRAP_RESAMPLES,
                                        seed=seed)
    return {"threshold": float(threshold),
            "metrics": {level: metrics[level] for level in ("image_level", "patient_level")}}


def median_kept_epochs(rows: Sequence[Mapping[str, Any]]) -> Dict[str, int]:
    """The median over the folds of each phase's kept epochs (rounded up)."""
    phases = dict.fromkeys(phase for row in rows for phase in row["kept_epochs"])
    return {phase: int(np.ceil(np.median([row["kept_epochs"].get(phase, 0) for row in rows]))) for phase in phases}
