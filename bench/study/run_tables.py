"""Tables of how the study ran: wall time and memory, Trainer throughput, test-time
augmentation, mixed bfloat16 against float32, and the data to reproduce it (settings,
machine, package versions, configs, commands)."""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional

from bench.study.steps import BOOTSTRAP_RESAMPLES
from bench.study.tables import Table, metric, number, with_interval


def _dicts(node: Any) -> Iterator[Dict[str, Any]]:
    """Every dict nested in `node` (itself included), depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _dicts(value)


def step_minutes(results: Dict[str, Any]) -> float:
    """Sum of the wall times of every step result in `results`."""
    return sum(float(d["wall_seconds"]) for d in _dicts(results) if "step" in d and "wall_seconds" in d) / 60


def collect_commands(results: Dict[str, Any]) -> List[List[str]]:
    """The CLI commands the steps in `results` ran, in order."""
    return [d["command"] for d in _dicts(results) if isinstance(d.get("command"), list)]


def named_runs(results: Dict[str, Any], part: str = "runs") -> Dict[str, Dict[str, Any]]:
    """`part` ("runs" or "throughput") of both data sets, named "<data set> <name>"."""
    return {f"{dataset} {name}": entry for dataset in ("idc", "breakhis") if results.get(dataset)
            for name, entry in results[dataset].get(part, {}).items()}


def runs_table(results: Dict[str, Any]) -> Table:
    """Wall time, peak memory, Trainer seconds and epochs of every pipeline run."""
    table = Table("runs", "Wall time and memory",
                  ["run", "wall time", "peak memory (process tree)", "Trainer seconds", "epochs run"])
    for name, run in named_runs(results).items():
        trainers = ", ".join(f"{kind} {t['train_seconds']:.0f} s" for kind, t in run["trainers"].items())
        epochs = ", ".join(f"{kind} {len(t['history']['epoch'])}" for kind, t in run["trainers"].items())
        # Results stored before the scope was recorded counted the generator's own memory too.
        bound = "" if run.get("peak_memory_scope") == "command processes" else "<= "
        table.rows.append([name, f"{run['wall_seconds'] / 60:.1f} min",
                           f"{bound}{run['peak_memory_mib'] / 1024:.1f} GiB", trainers, epochs])
    idc_runs = results.get("idc", {}).get("runs", {})
    if "densenet" in idc_runs and "mil" in idc_runs:
        total = idc_runs["densenet"]["wall_seconds"] + idc_runs["mil"]["wall_seconds"]
        table.rows.append(["idc densenet + mil (the full IDC pipeline)", f"{total / 60:.1f} min", "-", "-", "-"])
    return table


def test_time_augmentation_table(results: Dict[str, Any]) -> Optional[Table]:
    """Eval-split AUC of every model that averages over the 8 symmetries, with and without."""
    table = Table("test-time-augmentation", "Test-time augmentation",
                  ["run", "model", "eval images", "eval AUC, one view", "eval AUC, mean of 8", "change"])
    for name, run in named_runs(results).items():
        for kind, trainer in run["trainers"].items():
            split = trainer.get("eval_split") or {}
            if trainer.get("test_time_augmentation") and split.get("auc_single_view"):
                single, averaged = split["auc_single_view"], split["auc"]
                table.rows.append([name, kind, str(split["images"]), f"{single:.3f}", f"{averaged:.3f}",
                                   f"{averaged - single:+.3f}"])
    return table if table.rows else None


def throughput_table(results: Dict[str, Any]) -> Table:
    """Trainer images/s against a bare fit with the same augmentation, the model's own
    compute rate and the input pipeline alone (bench/pipeline.compare_trainer)."""
    table = Table("throughput", "Input pipeline vs compute",
                  ["run", "model (phase)", "Trainer img/s", "bare fit, same augmentation img/s", "ratio",
                   "model compute alone img/s", "ratio", "input pipeline alone img/s"])
    for name, row in named_runs(results, "throughput").items():
        if "model_compute_images_per_second" in row:
            bare, bare_ratio = row["bare_images_per_second"], row.get("ratio_tfx_over_bare")
            compute, compute_ratio = row["model_compute_images_per_second"], row.get("ratio_tfx_over_model_compute")
        else:  # stored before the bare fit used the Trainer's augmentation: it was the compute rate
            bare = bare_ratio = None
            compute, compute_ratio = row["bare_images_per_second"], row.get("ratio_tfx_over_bare")
        table.rows.append([name, f"{row['model_kind']} ({row['compared_phase']})",
                           number(row["tfx_images_per_second"], 1, "-"), number(bare, 1, "-"),
                           number(bare_ratio, 2, "-"), number(compute, 1, "-"), number(compute_ratio, 2, "-"),
                           number(row["input_pipeline_only_images_per_second"], 1, "-")])
    return table


def precision_speed_table(results: Dict[str, Any]) -> Optional[Table]:
    """bench/models.py: train and inference images/s in float32 and mixed bfloat16."""
    speed = results.get("precision_speed", {}).get("models")
    if not speed:
        return None
    machine = speed["machine"]
    table = Table("precision-speed", "Mixed bfloat16 vs float32: speed",
                  ["model", "batch", "CPU AMX / AVX512-BF16", "train img/s fp32 -> bf16", "speed-up",
                   "inference img/s fp32 -> bf16", "speed-up"])
    for kind, figures in speed["results"].items():
        fp32, bf16, ratio = figures["float32"], figures["mixed_bfloat16"], speed["ratios"][kind]
        table.rows.append([f"{kind} ({fp32['image_size']} px)", str(speed["batch_size"]),
                           f"{machine['amx']} / {machine['avx512_bf16']}",
                           f"{fp32['train_images_per_second']:.1f} -> {bf16['train_images_per_second']:.1f}",
                           f"{ratio['train_images_per_second_bf16_over_fp32']:.2f}x",
                           f"{fp32['infer_images_per_second']:.1f} -> {bf16['infer_images_per_second']:.1f}",
                           f"{ratio['infer_images_per_second_bf16_over_fp32']:.2f}x"])
    return table


def precision_accuracy_table(results: Dict[str, Any]) -> Optional[Table]:
    """The BreakHis models (mixed bfloat16) against the same runs in float32, on the test patients."""
    breakhis = results.get("breakhis", {})
    evaluations = breakhis.get("evaluations", {})
    kinds = [kind for kind in ("densenet", "mil") if evaluations.get(kind) and evaluations.get(f"{kind}_fp32")]
    if not kinds:
        return None
    table = Table("precision-accuracy", "Mixed bfloat16 vs float32: BreakHis test accuracy",
                  ["model", "image AUC bf16", "image AUC fp32", "balanced accuracy bf16", "balanced accuracy fp32",
                   "Trainer seconds bf16 / fp32"])
    runs = breakhis["runs"]
    for kind in kinds:
        bf16, fp32 = evaluations[kind], evaluations[f"{kind}_fp32"]
        seconds = (runs["models"]["trainers"][kind]["train_seconds"],
                   runs["models_fp32"]["trainers"][kind]["train_seconds"])
        table.rows.append([kind] + [with_interval(metric(block, "image_level", name))
                                    for name in ("auc", "balanced_accuracy") for block in (bf16, fp32)]
                          + [f"{seconds[0]:.0f} / {seconds[1]:.0f}"])
    return table


def compute_tables(results: Dict[str, Any]) -> List[Table]:
    """The tables of docs/results/compute.md, in order."""
    tables = [runs_table(results), test_time_augmentation_table(results), throughput_table(results),
              precision_speed_table(results), precision_accuracy_table(results)]
    return [table for table in tables if table is not None]


def settings_table(results: Dict[str, Any], invocation_minutes: Optional[float] = None) -> Table:
    """The study's settings, machine and compute."""
    machine = results["machine"]
    rows = [("git commit", results["git_commit"]), ("created", results["created"]),
            ("CPU", f"{machine['cpus']} cores, {machine['cpu']}"), ("platform", machine.get("platform", "-")),
            ("python", machine.get("python", "-")), ("data", results.get("data", "-")),
            ("seed", str(results.get("seed", "-"))),
            ("confidence intervals", f"95 %, percentile bootstrap over test patients ({BOOTSTRAP_RESAMPLES} "
                                     "resamples)"),
            ("patient score", results["rules"]["score"]), ("patient label", results["rules"]["label"]),
            ("steps' wall time, total", f"{step_minutes(results):.0f} min")]
    if invocation_minutes is not None:
        rows.append(("this invocation (finished steps reused)", f"{invocation_minutes:.0f} min"))
    return Table("settings", "Settings and machine", ["setting", "value"], [list(row) for row in rows])


def packages_table(results: Dict[str, Any]) -> Table:
    """Installed versions of the packages the results depend on."""
    return Table("packages", "Packages", ["package", "version"],
                 [[name, version] for name, version in results["packages"].items()])


def configs_table(results: Dict[str, Any]) -> Table:
    """Every pipeline run's models and the key of its exact config in results.json."""
    table = Table("configs", "Pipeline configs", ["run", "models", "config in results.json"])
    for dataset in ("idc", "breakhis"):
        for name, run in results.get(dataset, {}).get("runs", {}).items():
            table.rows.append([f"{dataset} {name}", ", ".join(run["trainers"]), f"`{dataset}.runs.{name}.config`"])
    return table


def commands_table(results: Dict[str, Any]) -> Table:
    """The commands the steps ran, in order, with the step that ran each."""
    studied = {key: results[key] for key in ("idc", "breakhis") if key in results}
    table = Table("commands", "Commands run, in order", ["step", "command"])
    table.rows = [[d.get("step", "-"), f"`{' '.join(d['command'])}`"] for d in _dicts(studied)
                  if isinstance(d.get("command"), list)]
    return table


def reproducibility_tables(results: Dict[str, Any], invocation_minutes: Optional[float] = None) -> List[Table]:
    """The tables of docs/results/reproducibility.md, in order."""
    return [settings_table(results, invocation_minutes), packages_table(results), configs_table(results),
            commands_table(results)]
