"""Tables of the test-patient results, built from the study's results as data.

A `Table` holds formatted cells only; `report` writes it as markdown. Every model of a
data set is one `ModelRow`, in one order for all tables: baselines, pipeline models,
then (IDC) the same models scored with slide context.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence

from bench.study.steps import IDC_BAG_SIZE

METRICS = ("auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1")
REGION_UNIT = f"region ({IDC_BAG_SIZE}x{IDC_BAG_SIZE} patches)"
DATASET_NAMES = {"idc": "IDC", "breakhis": "BreakHis"}
# Evaluation key -> model label, per data set, in table order.
IDC_MODELS = (("baseline", "plain 6-conv CNN (baseline)"),
              ("baseline_raw", "plain 6-conv CNN, no stain normalisation (baseline)"),
              ("densenet", "DenseNet201 from scratch"),
              ("mil", "attention MIL (regions)"),
              ("baseline_context", "plain 6-conv CNN, slide context"),
              ("baseline_raw_context", "plain 6-conv CNN, no stain normalisation, slide context"),
              ("densenet_context", "DenseNet201 from scratch, slide context"),
              ("mil_context", "attention MIL (regions), slide context"))
BREAKHIS_MODELS = (("baseline", "plain 8-conv CNN (baseline)"),
                   ("densenet", "DenseNet201 from scratch"),
                   ("densenet_warm_start", "DenseNet201 warm-started from IDC"),
                   ("mil", "attention MIL"))
# Evaluation key -> (run, Trainer) whose eval-split AUC history belongs to the model.
TRAINER_RUNS = {"idc": {"densenet": ("densenet", "densenet"), "mil": ("mil", "mil")},
                "breakhis": {"densenet": ("models", "densenet"), "mil": ("models", "mil"),
                             "densenet_warm_start": ("warm_start", "densenet")}}
_PLAIN_BASELINES = ("baseline", "baseline_raw")
_CONTEXT_BASELINES = ("baseline_context", "baseline_raw_context")
# Model, then the baseline groups it may be compared with: the first group present is used.
BASELINE_COMPARISONS = (("densenet", (_PLAIN_BASELINES,)), ("mil", (_PLAIN_BASELINES,)),
                        ("densenet_context", (_CONTEXT_BASELINES, _PLAIN_BASELINES)),
                        ("mil_context", (_CONTEXT_BASELINES, _PLAIN_BASELINES)))


@dataclasses.dataclass
class Table:
    """A generated table: a heading, column names and rows of formatted cells."""

    key: str  # stable identifier (tests, links)
    title: str  # the markdown heading
    columns: List[str]
    rows: List[List[str]] = dataclasses.field(default_factory=list)

    def markdown(self) -> List[str]:
        """The table as markdown lines, under a `##` heading."""
        return ([f"## {self.title}", "", "| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
                + ["| " + " | ".join(row) + " |" for row in self.rows])

    def records(self) -> List[Dict[str, str]]:
        """The rows as dicts keyed by column name."""
        return [dict(zip(self.columns, row)) for row in self.rows]


@dataclasses.dataclass
class ModelRow:
    """One scored model of a data set."""

    dataset: str  # "idc" or "breakhis"
    key: str  # its evaluation key in the results
    label: str
    unit: str  # what one image is: patch, region, image
    block: Dict[str, Any]  # its evaluation (image_level, patient_level, patients, ...)
    eval_auc: Optional[float]  # the eval-split AUC behind its epoch and threshold


@dataclasses.dataclass
class TargetCheck:
    """One target of the results issue against one model's test figure."""

    dataset: str
    model: str
    target: str  # e.g. "image auc"
    goal: float
    entry: Dict[str, Any]  # value, ci_low, ci_high
    met: bool


def number(value: Optional[float], digits: int = 3, missing: str = "n/a") -> str:
    """`value` with `digits` decimals, or `missing`."""
    return missing if value is None else f"{value:.{digits}f}"


def with_interval(entry: Dict[str, Any]) -> str:
    """`0.912 [0.871, 0.948]`, `0.912` without an interval, or n/a."""
    if entry.get("value") is None:
        return "n/a"
    if entry.get("ci_low") is None:
        return f"{entry['value']:.3f}"
    return f"{entry['value']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def metric(block: Dict[str, Any], level: str, name: str) -> Dict[str, Any]:
    """A metric entry of an evaluation (`level` "image_level" or "patient_level")."""
    return block[level]["metrics"][name]


def widths(sigma: Any, unit: str) -> str:
    """`1.5 patch widths`, `1 region width`: a slide-context sigma with its unit."""
    value = float(sigma)
    return f"{value:g} {unit} width{'' if value == 1 else 's'}"


def best_eval_auc(run: Dict[str, Any], kind: str) -> Optional[float]:
    """The best eval-split AUC a Trainer saw (what early stopping kept)."""
    values = [v for v in run["trainers"][kind]["history"].get("val_auc", []) if v is not None]
    return max(values) if values else None


def model_rows(results: Dict[str, Any], dataset: str) -> List[ModelRow]:
    """Every scored model of `dataset` ("idc" or "breakhis") present in `results`."""
    block = results.get(dataset)
    if not block:
        return []
    ev, runs = block["evaluations"], block["runs"]
    rows = []
    for key, label in IDC_MODELS if dataset == "idc" else BREAKHIS_MODELS:
        if key not in ev:
            continue
        if key.endswith("_context"):
            eval_auc = ev[key]["eval"]["eval_auc"]
        elif key.startswith("baseline"):
            eval_auc = ev[key]["baseline"].get("eval_auc")
        else:
            run, kind = TRAINER_RUNS[dataset][key]
            eval_auc = best_eval_auc(runs[run], kind) if run in runs else None
        unit = "image" if dataset == "breakhis" else REGION_UNIT if key.startswith("mil") else "patch"
        rows.append(ModelRow(dataset, key, label, unit, ev[key], eval_auc))
    return rows


def all_model_rows(results: Dict[str, Any]) -> List[ModelRow]:
    """`model_rows` of IDC, then BreakHis."""
    return model_rows(results, "idc") + model_rows(results, "breakhis")


def summary_table(results: Dict[str, Any]) -> Table:
    """Eval-split AUC next to test AUC for every model."""
    table = Table("summary", "Summary", ["data set", "model", "eval-split AUC", "test AUC [95 % CI]"])
    for row in all_model_rows(results):
        table.rows.append([DATASET_NAMES[row.dataset], row.label, number(row.eval_auc, missing="-"),
                           with_interval(metric(row.block, "image_level", "auc"))])
    return table


def target_checks(results: Dict[str, Any]) -> List[TargetCheck]:
    """Every model against its data set's targets, and the MIL attention's localisation."""
    targets = results["targets"]
    checks = []
    for row in all_model_rows(results):
        for key, goal in targets[row.dataset].items():
            level, name = key.split(".")
            entry = metric(row.block, level, name)
            checks.append(TargetCheck(DATASET_NAMES[row.dataset], row.label,
                                      f"{level.split('_')[0]} {name.replace('_', ' ')}", goal, entry,
                                      entry["value"] is not None and entry["value"] >= goal))
    mil = results.get("idc", {}).get("evaluations", {}).get("mil", {})
    if "localisation" in mil:
        goal, entry = targets["localisation"]["within_bag"], mil["localisation"]["within_bag"]
        checks.append(TargetCheck("IDC", "attention MIL (regions)", "within-bag attention AUC", goal, entry,
                                  entry.get("value") is not None and entry["value"] >= goal))
    return checks


def targets_table(checks: Sequence[TargetCheck]) -> Table:
    """The target checks, one per row."""
    table = Table("targets", "Targets", ["data set", "model", "target", "goal", "test value [95 % CI]", "met"])
    table.rows = [[c.dataset, c.model, c.target, f"{c.goal:g}", with_interval(c.entry), "yes" if c.met else "no"]
                  for c in checks]
    return table


def _eval_split_text(records: Optional[Dict[str, Any]]) -> str:
    """`2 patients, 2594 images (2399/195)`: the eval split a threshold was chosen on."""
    if not records:
        return "-"
    split = records["splits"]["eval"]
    counts = split["label_counts"]
    return (f"{len(split['patients'])} patient{'' if len(split['patients']) == 1 else 's'}, "
            f"{split['num_examples']} images ({counts['benign']}/{counts['malignant']})")


def thresholds_table(results: Dict[str, Any]) -> Table:
    """Each model's eval-split threshold, its test rates, and the balanced accuracy the
    threshold best for the test images would give (chosen in hindsight: an upper bound)."""
    table = Table("thresholds", "Decision thresholds",
                  ["data set", "model", "threshold", "chosen on (eval split, benign/malignant)", "sensitivity",
                   "specificity", "balanced accuracy", "balanced accuracy, best threshold in hindsight",
                   "target reached in hindsight"])
    for row in all_model_rows(results):
        block = results[row.dataset]
        records = block.get("bag_records", block["records"]) if row.key.startswith("mil") else block["records"]
        hindsight = row.block["image_level"].get("balanced_accuracy_in_hindsight", {}).get("value")
        goal = results["targets"][row.dataset]["image_level.balanced_accuracy"]
        table.rows.append([DATASET_NAMES[row.dataset], row.label, number(row.block.get("decision_threshold")),
                           _eval_split_text(records)]
                          + [with_interval(metric(row.block, "image_level", name))
                             for name in ("sensitivity", "specificity", "balanced_accuracy")]
                          + [number(hindsight), "-" if hindsight is None else "yes" if hindsight >= goal else "no"])
    return table


def _patient_aucs(block: Dict[str, Any]) -> List[tuple]:
    """(patient, AUC of its own images) of every test patient with both classes."""
    return [(row["patient_id"], row["image_auc"]) for row in block.get("patients", [])
            if row.get("image_auc") is not None]


def comparison_verdict(model: Dict[str, Any], baseline: Dict[str, Any]) -> str:
    """A model's AUC entry against a baseline's: "clearly above" when the model's interval lies
    above the baseline's, "above, intervals overlap" when only its point value does, else "not
    above" ("n/a" when either is unscored)."""
    if model.get("value") is None or baseline.get("value") is None:
        return "n/a"
    if model.get("ci_low") is not None and baseline.get("ci_high") is not None \
            and model["ci_low"] > baseline["ci_high"]:
        return "clearly above"
    return "above, intervals overlap" if model["value"] > baseline["value"] else "not above"


def baseline_comparison_table(results: Dict[str, Any]) -> Optional[Table]:
    """IDC: each pipeline model's test AUC against each plain-CNN baseline's, with the worst
    and best single test patients that bound the bootstrap intervals of a small test split."""
    rows = {row.key: row for row in model_rows(results, "idc")}
    if "baseline" not in rows:
        return None
    table = Table("baselines", "Against the plain baselines (IDC)",
                  ["model", "test AUC [95 % CI]", "baseline", "baseline test AUC [95 % CI]", "verdict",
                   "model's worst test patient (AUC)", "baseline's best test patient (AUC)"])
    for key, groups in BASELINE_COMPARISONS:
        if key not in rows:
            continue
        bars = next(([rows[b] for b in group if b in rows] for group in groups if any(b in rows for b in group)), [])
        auc = metric(rows[key].block, "image_level", "auc")
        worst = min(_patient_aucs(rows[key].block), key=lambda item: item[1], default=None)
        for bar in bars:
            base = metric(bar.block, "image_level", "auc")
            best = max(_patient_aucs(bar.block), key=lambda item: item[1], default=None)
            table.rows.append([rows[key].label, with_interval(auc), bar.label, with_interval(base),
                               comparison_verdict(auc, base),
                               "-" if worst is None else f"{worst[0]} {worst[1]:.3f}",
                               "-" if best is None else f"{best[0]} {best[1]:.3f}"])
    return table


def split_table(dataset: str, records: Dict[str, Any]) -> Table:
    """Patients and images per split (the first 12 patient ids)."""
    table = Table(f"{dataset}-splits", f"{DATASET_NAMES[dataset]} splits",
                  ["split", "patients", "images", "benign", "malignant"])
    for split, info in records["splits"].items():
        counts, patients = info["label_counts"], info["patients"]
        listed = ", ".join(patients[:12]) + (" ..." if len(patients) > 12 else "")
        table.rows.append([split, f"{len(patients)} ({listed})", str(info["num_examples"]),
                           str(counts["benign"]), str(counts["malignant"])])
    return table


def metrics_table(dataset: str, rows: Sequence[ModelRow], level: str) -> Table:
    """Every metric of every model at `level`, with 95 % intervals."""
    name = level.split("_")[0]
    table = Table(f"{dataset}-{name}", f"{DATASET_NAMES[dataset]} {name} level",
                  ["model", "unit", "n (benign/malignant)"] + [m.replace("_", " ") for m in METRICS])
    for row in rows:
        scored = row.block[level]
        if not scored.get("reported", True):  # IDC's patient level: see its tumour fractions
            table.rows.append([row.label, row.unit, scored["reason"]] + ["-"] * len(METRICS))
            continue
        counts = scored["label_counts"]
        table.rows.append([row.label, row.unit, f"{scored['n_items']} ({counts['benign']}/{counts['malignant']})"]
                          + [with_interval(metric(row.block, level, m)) for m in METRICS])
    return table


def per_patient_table(dataset: str, rows: Sequence[ModelRow], fields: Sequence[str], title: str) -> Table:
    """Each test patient's own images scored per model: `fields` (per-patient keys such as
    "image_auc") joined by " / "; "-" where a model's result lacks them."""
    patients: Dict[str, Dict[str, Any]] = {}
    for row in rows:
        for patient in row.block.get("patients", []):
            patients.setdefault(patient["patient_id"], patient)
    table = Table(f"{dataset}-per-patient-{'-'.join(f.replace('image_', '') for f in fields)}", title,
                  ["patient", "images (malignant)"] + [row.label for row in rows])
    for patient, info in patients.items():
        cells = []
        for row in rows:
            own = next((p for p in row.block.get("patients", []) if p["patient_id"] == patient), None)
            cells.append("-" if own is None or any(f not in own for f in fields)
                         else " / ".join(number(own[f]) for f in fields))
        table.rows.append([patient, f"{info['n_images']} ({info['n_malignant_images']})"] + cells)
    return table


def slide_context_table(results: Dict[str, Any]) -> Optional[Table]:
    """IDC models with slide context: width, eval AUCs, threshold, test AUC alone and with it."""
    rows = {row.key: row for row in model_rows(results, "idc")}
    context = [row for row in rows.values() if row.key.endswith("_context")]
    if not context:
        return None
    table = Table("idc-slide-context", "IDC slide context",
                  ["model", "sigma", "eval AUC, alone", "eval AUC, slide context", "threshold", "test AUC, alone",
                   "test AUC, slide context"])
    for row in context:
        setting, alone = row.block["eval"], rows[row.key[:-len("_context")]]
        table.rows.append([alone.label, widths(setting["sigma"], "region" if row.key == "mil_context" else "patch"),
                           number(setting["eval_auc_without"], missing="-"), number(row.eval_auc, missing="-"),
                           number(row.block["decision_threshold"]),
                           with_interval(metric(alone.block, "image_level", "auc")),
                           with_interval(metric(row.block, "image_level", "auc"))])
    return table


def localisation_table(idc: Dict[str, Any]) -> Table:
    """IDC test regions: how attention, tile probabilities (alone and with slide context) and
    the patch-supervised DenseNet201 rank the IDC-positive patches."""
    ev = idc["evaluations"]
    loc = ev["mil"]["localisation"]
    rows = [(loc, "within_bag", "attention, within positive bags (mean per-bag AUC)"),
            (loc, "pooled", "attention, pooled over positive bags"),
            (loc, "whole_slide", "attention x region probability, all regions")]
    tiles = ev["mil"].get("tile_localisation")
    if tiles:
        rows += [(tiles, "within_bag", "instance classifier's tile probability, within positive bags"),
                 (tiles, "pooled", "instance classifier's tile probability, pooled over positive bags")]
    tile_context = ev.get("mil_tile_context")
    if tile_context:
        width = widths(tile_context["sigma"], "patch")
        rows += [(tile_context["localisation"], "within_bag",
                  f"tile probability with slide context ({width}), within positive bags"),
                 (tile_context["localisation"], "pooled",
                  f"tile probability with slide context ({width}), pooled over positive bags")]
    reference = ev.get("densenet_localisation", {})
    for name, label in (("alone", "patch probability"), ("slide_context", "patch probability with slide context")):
        if name in reference:
            rows.append((reference[name], "within_bag",
                         f"reference, trained WITH patch labels: DenseNet201's {label}, within positive bags"))
    table = Table("idc-localisation", "IDC MIL localisation (test regions)",
                  ["score", "AUC [95 % CI]", "tiles (positive/negative)", "bags", "patients"])
    for scores, key, label in rows:
        entry = scores[key]
        table.rows.append([label, with_interval(entry), f"{entry.get('n_tiles')} ({entry.get('n_positive_tiles')}/"
                           f"{entry.get('n_negative_tiles')})", str(entry.get("n_bags")), str(entry.get("n_patients"))])
    return table


def transfer_table(breakhis: Dict[str, Any]) -> Optional[Table]:
    """BreakHis DenseNet201 from scratch against the same model warm-started from IDC."""
    ev = breakhis["evaluations"]
    if "densenet_warm_start" not in ev:
        return None
    scratch = metric(ev["densenet"], "image_level", "auc")["value"]
    table = Table("breakhis-transfer", "BreakHis transfer from IDC",
                  ["DenseNet201", "test image AUC [95 % CI]", "test balanced accuracy [95 % CI]",
                   "AUC change from scratch"])
    for label, key in (("from scratch", "densenet"), ("warm-started from the IDC backbone", "densenet_warm_start")):
        auc = metric(ev[key], "image_level", "auc")
        change = "-" if key == "densenet" or None in (scratch, auc["value"]) else f"{auc['value'] - scratch:+.3f}"
        balanced_accuracy = metric(ev[key], "image_level", "balanced_accuracy")
        table.rows.append([label, with_interval(auc), with_interval(balanced_accuracy), change])
    return table


def result_tables(results: Dict[str, Any]) -> List[Table]:
    """The tables of docs/results/tables.md, in order."""
    tables = [summary_table(results), targets_table(target_checks(results)), thresholds_table(results),
              baseline_comparison_table(results)]
    for dataset in ("idc", "breakhis"):
        if dataset not in results:
            continue
        rows = model_rows(results, dataset)
        tables += [split_table(dataset, results[dataset]["records"]), metrics_table(dataset, rows, "image_level"),
                   metrics_table(dataset, rows, "patient_level")]
        if dataset == "idc":
            tables += [per_patient_table(dataset, rows, ("image_auc", "image_accuracy"),
                                         "IDC per test patient: AUC and accuracy"),
                       per_patient_table(dataset, rows, ("image_sensitivity", "image_specificity"),
                                         "IDC per test patient: sensitivity and specificity"),
                       slide_context_table(results), localisation_table(results["idc"])]
        else:
            tables.append(transfer_table(results["breakhis"]))
    return [table for table in tables if table is not None]
