"""Tables of the IDC patient-level cross-validation (bench/patient_cv.py): how the training
recipes and the slide-context widths were chosen without the test patients.

A recipe's fold results ("runs") carry plain scores ("auc", "within_bag", ...) and, for
slide-context recipes, mappings from width to score ("slide_context", ...). A `Sweep` is
one such score over widths: sigma ("none" = without slide context) -> (mean over the folds
that scored it, per-fold values).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from bench.study.tables import Table, number, widths

Sweep = Dict[str, Tuple[Optional[float], List[Optional[float]]]]
EXPERIMENTS = (("patch", "plain CNN (patches)", "patch"), ("mil", "attention MIL (regions)", "region"))


def mean_of(values: Sequence[Optional[float]]) -> Optional[float]:
    """The mean of the known values, or None."""
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def recipe_runs(cv: Dict[str, Any], experiment: str, key: str) -> List[Dict[str, Any]]:
    """The fold results carrying `key` of the experiment's first recipe that scored it."""
    for entry in cv.get(experiment, {}).get("recipes", {}).values():
        runs = [run for run in entry.get("runs", []) if key in run]
        if runs:
            return runs
    return []


def sweep(runs: Sequence[Dict[str, Any]], key: str, alone_key: Optional[str] = None) -> Sweep:
    """The runs' `key` mapping by width, in the first run's order; "none" from the runs'
    `alone_key` score when given (or from the mapping itself); widths no fold scored are
    left out."""
    rows: Sweep = {}
    if alone_key and any(alone_key in run for run in runs):
        folds = [run.get(alone_key) for run in runs]
        rows["none"] = (mean_of(folds), folds)
    for sigma in runs[0][key] if runs else ():
        folds = [run[key].get(sigma) for run in runs]
        if mean_of(folds) is not None:
            rows[sigma] = (mean_of(folds), folds)
    return rows


def best_width(rows: Sweep) -> Optional[str]:
    """The width (not "none") with the highest mean; the first of equals."""
    scored = [(sigma, mean) for sigma, (mean, _) in rows.items() if sigma != "none" and mean is not None]
    return max(scored, key=lambda item: item[1])[0] if scored else None


def localisation_sweeps(cv: Dict[str, Any]) -> Dict[str, Sweep]:
    """Cross-validated within-region AUCs with slide context (patch widths): "patch", the
    plain CNN's patch probabilities (trained with patch labels); "tile", the MIL instance
    classifier's tile probabilities (region labels only). Absent when not scored."""
    sweeps = {}
    for name, experiment, key, alone in (("patch", "patch", "within_bag_context", "within_bag"),
                                         ("tile", "mil", "tile_within_bag_context", "tile_within_bag")):
        runs = recipe_runs(cv, experiment, key)
        if runs:
            sweeps[name] = sweep(runs, key, alone)
    return sweeps


def slide_context_sweeps(cv: Dict[str, Any], experiment: str) -> Dict[str, Sweep]:
    """An experiment's held-out "auc" and "balanced_accuracy" (at the threshold best in
    hindsight) by slide-context width; empty mappings when not scored."""
    return {"auc": sweep(recipe_runs(cv, experiment, "slide_context"), "slide_context", "auc"),
            "balanced_accuracy": sweep(recipe_runs(cv, experiment, "best_balanced_accuracy"),
                                       "best_balanced_accuracy")}


def best_recipe(block: Dict[str, Any], score: str) -> Optional[Tuple[str, float, List[Optional[float]]]]:
    """(name, mean, folds) of the recipe with the highest cross-validated mean `score`."""
    scored = [(name, entry[score]["mean"], entry[score]["folds"]) for name, entry in block.get("recipes", {}).items()
              if score in entry and entry[score]["mean"] is not None]
    return max(scored, key=lambda item: item[1]) if scored else None


def mean_and_folds(mean: Optional[float], folds: Sequence[Optional[float]], bold: bool = False) -> str:
    """`0.909 (0.857 / 0.942 / 0.929)`, in bold when `bold`; n/a without a mean."""
    if mean is None:
        return "n/a"
    text = f"{mean:.3f} (" + " / ".join(number(v) for v in folds) + ")"
    return f"**{text}**" if bold else text


def _sweep_cell(rows: Sweep, sigma: str) -> str:
    """A sweep's cell at `sigma`, the best width in bold; "-" when not scored there."""
    if sigma not in rows or rows[sigma][0] is None:
        return "-"
    return mean_and_folds(*rows[sigma], bold=sigma == best_width(rows))


def _ordered_widths(*sweeps: Sweep) -> List[str]:
    """"none" (when present), then every width of the sweeps, smallest first."""
    sigmas = {sigma for rows in sweeps for sigma in rows}
    return (["none"] if "none" in sigmas else []) + sorted(sigmas - {"none"}, key=float)


def _sweep_table(key: str, title: str, sigma_column: str, columns: Sequence[Tuple[str, Sweep]],
                 used: Sequence[Tuple[str, Optional[float]]] = ()) -> Optional[Table]:
    """Widths as rows, one sweep per column; a "yes" column per (name, sigma) in `used`."""
    columns = [(label, rows) for label, rows in columns if rows]
    if not columns:
        return None
    used = [(name, sigma) for name, sigma in used if sigma is not None]
    table = Table(key, title, [sigma_column] + [label for label, _ in columns] + [name for name, _ in used])
    for sigma in _ordered_widths(*(rows for _, rows in columns)):
        flags = ["yes" if sigma != "none" and float(sigma) == float(value) else "" for _, value in used]
        table.rows.append([sigma] + [_sweep_cell(rows, sigma) for _, rows in columns] + flags)
    return table


def recipe_settings(recipe: Dict[str, Any]) -> str:
    """A recipe of bench/configs/patient_cv.json as text: what it changes from the defaults."""
    parts = [f"{key} {value}" for key, value in recipe.get("augment", {}).items()]
    parts += [f"{key} {value}" for key, value in recipe.get("model", {}).items()]
    if recipe.get("weight_averaging") is not None:
        parts.append(f"weight averaging {recipe['weight_averaging']}")
    if recipe.get("epochs") is not None:
        parts.append(f"{recipe['epochs']} epochs")
    if recipe.get("stain_normalization"):
        parts.insert(0, "stain normalisation")
    for key, label in (("slide_context_sigmas", "slide context"), ("tile_context_sigmas", "tile slide context")):
        if recipe.get(key):
            parts.append(f"{label} widths " + ", ".join(f"{v:g}" for v in recipe[key]))
    return ", ".join(parts) or "defaults"


def folds_table(cv: Dict[str, Any]) -> Optional[Table]:
    """The patient folds (train and eval patients only)."""
    folds = cv.get("patch", {}).get("folds") or cv.get("mil", {}).get("folds") or []
    if not folds:
        return None
    table = Table("cv-folds", "Patient folds", ["fold", "patients", "count"])
    table.rows = [[str(index), ", ".join(fold), str(len(fold))] for index, fold in enumerate(folds, 1)]
    return table


def recipes_table(cv: Dict[str, Any]) -> Table:
    """Every recipe's held-out AUC and within-region AUC, mean (folds); each experiment's best in bold."""
    table = Table("cv-recipes", "Training recipes",
                  ["experiment", "recipe", "changes from the defaults", "held-out AUC", "within-region AUC"])
    for experiment, label, _ in EXPERIMENTS:
        block = cv.get(experiment, {})
        best = {score: (best_recipe(block, score) or (None,))[0] for score in ("auc", "within_bag")}
        for name, entry in block.get("recipes", {}).items():
            cells = [mean_and_folds(entry[score]["mean"], entry[score]["folds"], bold=name == best[score])
                     if score in entry else "-" for score in ("auc", "within_bag")]
            table.rows.append([label, name.replace("_", " "), recipe_settings(entry["recipe"])] + cells)
    return table


def pipeline_sigma(idc: Dict[str, Any], kind: str) -> Optional[float]:
    """The slide-context width of the pipeline's `kind` model: its exported setting, else its config's."""
    setting = idc["evaluations"].get(f"{kind}_context", {}).get("eval", {}).get("sigma")
    if setting is None:
        setting = idc["runs"].get(kind, {}).get("config", {}).get("slide_context_sigma")
    return None if setting is None else float(setting)


def best_table(cv: Dict[str, Any], targets: Dict[str, Any]) -> Optional[Table]:
    """The best cross-validated figure of each kind of model and score, against its target."""
    goals = {"auc": targets["idc"]["image_level.auc"],
             "balanced_accuracy": targets["idc"]["image_level.balanced_accuracy"],
             "within": targets["localisation"]["within_bag"]}
    table = Table("cv-best", "Best cross-validated figures against the targets",
                  ["model", "score", "best setting", "mean (folds)", "target", "reaches target"])

    def add(model: str, score: str, setting: str, mean: Optional[float], folds: Sequence, goal: float) -> None:
        table.rows.append([model, score, setting, mean_and_folds(mean, folds), f"{goal:g}",
                           "-" if mean is None else "yes" if mean >= goal else "no"])

    def add_sweep(model: str, score: str, rows: Sweep, unit: str, goal: float) -> None:
        if "none" in rows:
            add(model, score, "alone", *rows["none"], goal)
        width = best_width(rows)
        if width is not None:
            add(model, score, f"slide context, sigma {widths(width, unit)}", *rows[width], goal)

    for experiment, label, unit in EXPERIMENTS:
        recipe = best_recipe(cv.get(experiment, {}), "auc")
        if recipe:
            add(label, "held-out AUC", f"recipe {recipe[0].replace('_', ' ')}", recipe[1], recipe[2], goals["auc"])
        sweeps = slide_context_sweeps(cv, experiment)
        width = best_width(sweeps["auc"])
        if width is not None:
            add(label, "held-out AUC", f"slide context, sigma {widths(width, unit)}", *sweeps["auc"][width],
                goals["auc"])
        add_sweep(label, "balanced accuracy, threshold best in hindsight", sweeps["balanced_accuracy"], unit,
                  goals["balanced_accuracy"])
    localisation = localisation_sweeps(cv)
    for experiment, model in (("patch", "plain CNN, patch probabilities (trained WITH patch labels)"),
                              ("mil", "attention MIL, attention (region labels only)")):
        recipe = best_recipe(cv.get(experiment, {}), "within_bag")
        if recipe:
            add(model, "within-region AUC", f"recipe {recipe[0].replace('_', ' ')}", recipe[1], recipe[2],
                goals["within"])
        if experiment == "patch" and "patch" in localisation:
            width = best_width(localisation["patch"])
            if width is not None:
                add(model, "within-region AUC", f"slide context, sigma {widths(width, 'patch')}",
                    *localisation["patch"][width], goals["within"])
    if "tile" in localisation:
        add_sweep("MIL instance classifier, tile probabilities (region labels only)", "within-region AUC",
                  localisation["tile"], "patch", goals["within"])
    return table if table.rows else None


def cv_tables(idc: Dict[str, Any], targets: Dict[str, Any]) -> List[Table]:
    """The tables of docs/results/patient_cv.md, in order."""
    cv = idc.get("recipe_cv", {})
    tables = [folds_table(cv), recipes_table(cv)]
    for experiment, label, unit in EXPERIMENTS:
        sweeps = slide_context_sweeps(cv, experiment)
        config = "idc_densenet.json" if experiment == "patch" else "idc_mil.json"
        tables.append(_sweep_table(
            f"cv-{experiment}-slide-context", f"{label[0].upper() + label[1:]} with slide context ({unit} widths)",
            f"sigma ({unit} widths)",
            [("held-out AUC, mean (folds)", sweeps["auc"]),
             ("balanced accuracy at the threshold best in hindsight, mean (folds)", sweeps["balanced_accuracy"])],
            [(f"used by {config}", pipeline_sigma(idc, "densenet" if experiment == "patch" else "mil"))]))
    localisation = localisation_sweeps(cv)
    tile_context = idc.get("evaluations", {}).get("mil_tile_context", {})
    tables.append(_sweep_table(
        "cv-localisation-slide-context", "Within-region AUC with slide context (patch widths)", "sigma (patch widths)",
        [("plain CNN, patch probabilities (trained WITH patch labels)", localisation.get("patch", {})),
         ("MIL instance classifier, tile probabilities (region labels only)", localisation.get("tile", {})),
         ("MIL tile probabilities x attention", sweep(recipe_runs(cv, "mil", "tile_attention_within_bag_context"),
                                                      "tile_attention_within_bag_context"))],
        [("used on the test regions", tile_context.get("sigma"))]))
    tables.append(best_table(cv, targets))
    return [table for table in tables if table is not None]
