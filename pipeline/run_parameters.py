"""Run-time parameters of the compiled pipeline: what a run or a schedule changes without
recompiling (`histopath submit|schedule --param KEY=VALUE`).

`histopath compile` turns four task inputs into pipeline parameters, in the form TFX's
Kubeflow V2 compiler gives a `RuntimeParameter` (the task input reads
`componentInputParameter`, the root declares the parameter), with the compiled value as
the parameter's `defaultValue` (TFX would put defaults into the job's runtime config, which
a spec file does not carry):

| parameter | task input |
|---|---|
| `data_root` | IngestImages.data_root |
| `ingest_settings` | IngestImages.settings (JSON: span window, min new patients, ...) |
| `serving_model_dir` | LatestPushedModel.serving_model_dir |
| `push_destination` | Pusher.push_destination (PushDestination JSON) |
| `transform_settings` | Transform.custom_config (image size, stain normalisation) |
| `trainer_<kind>_settings` | trainer_<kind>.custom_config (the candidate's settings) |
| `evaluator_<kind>_eval_config` | evaluator_<kind>.eval_config (TFMA EvalConfig JSON) |
| `selection_rule` | SelectWinner.rule |

The user-facing keys (`data_root`, `serving_dir`, `span_window`, `min_new_patients`,
`preset`) are turned into values of those parameters from the spec's own defaults, so that
a run's settings stay consistent (the serving folder of LatestPushedModel and of the Pusher
move together; a preset sets the ingestion's split, Transform's, every Trainer's and
Evaluator's settings and the selection rule at once). A preset cannot change the graph:
its data set and models must be the spec's; the model keeps the spec's name. KFP sends them as the run's `runtime_config.parameters`, Vertex AI as
`runtimeConfig.parameterValues`; a parameter not sent keeps its default.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable

from histopath import fileio
from histopath.errors import ConfigError

# pipeline parameter -> (task, task input)
SPEC_PARAMETERS = {
    "data_root": ("IngestImages", "data_root"),
    "ingest_settings": ("IngestImages", "settings"),
    "serving_model_dir": ("LatestPushedModel", "serving_model_dir"),
    "push_destination": ("Pusher", "push_destination"),
}
TRAINER_PREFIX, EVALUATOR_PREFIX = "trainer_", "evaluator_"
USER_KEYS = {
    "data_root": "raw image root the run ingests (gs://... or a mounted path)",
    "serving_dir": "push destination; the model lands in SERVING_DIR/<model name>/<version>",
    "span_window": "train on every span (all) or the last N",
    "min_new_patients": "retrain only when new spans bring at least K new patients",
    "preset": "a named recipe (`histopath presets`) as shipped, for this run's split, training and selection "
              "(same data set and models as the spec; compile-time overrides do not apply)",
}


def spec_parameters(spec: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Every pipeline parameter this spec can have: `SPEC_PARAMETERS`, Transform's settings,
    the selection rule, and each Trainer's settings and Evaluator's EvalConfig."""
    found = {**SPEC_PARAMETERS, "transform_settings": ("Transform", "custom_config"),
             "selection_rule": ("SelectWinner", "rule")}
    for task in sorted(spec["root"]["dag"]["tasks"]):
        if task.startswith(TRAINER_PREFIX):
            found[f"{task}_settings"] = (task, "custom_config")
        elif task.startswith(EVALUATOR_PREFIX):
            found[f"{task}_eval_config"] = (task, "eval_config")
    return found


def parameterize(spec: dict[str, Any]) -> list[str]:
    """Turns the task inputs above into pipeline parameters (in place); returns their names."""
    tasks = spec["root"]["dag"]["tasks"]
    made = []
    for name, (task, key) in spec_parameters(spec).items():
        inputs = tasks.get(task, {}).get("inputs", {}).get("parameters", {})
        constant = inputs.get(key, {}).get("runtimeValue", {}).get("constant")
        if not isinstance(constant, str):
            continue
        spec["root"].setdefault("inputDefinitions", {}).setdefault("parameters", {})[name] = {
            "parameterType": "STRING", "defaultValue": constant, "isOptional": True}
        inputs[key] = {"componentInputParameter": name}
        made.append(name)
    return made


def defaults(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec's pipeline parameters and their default values."""
    declared = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    return {name: definition.get("defaultValue") for name, definition in declared.items()}


def parse(texts: Iterable[str]) -> dict[str, str]:
    """["KEY=VALUE", ...] -> {key: value}.

    Raises:
      ConfigError: not KEY=VALUE, an unknown or repeated key.
    """
    found: dict[str, str] = {}
    for text in texts or ():
        key, sep, value = text.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--param {text!r}: expected KEY=VALUE")
        if key not in USER_KEYS:
            raise ConfigError(f"--param {key}: unknown; choose from {', '.join(USER_KEYS)}")
        if key in found:
            raise ConfigError(f"--param {key} given twice")
        found[key] = value.strip()
    return found


def _need(spec_defaults: dict[str, Any], name: str, key: str) -> Any:
    if name not in spec_defaults:
        raise ConfigError(f"--param {key}: this spec has no {name} parameter (it reads ingested records, or it was "
                          "compiled before parameters existed): recompile it with `histopath compile`")
    return spec_defaults[name]


def _cluster_path(key: str, value: str) -> str:
    if not value or (not fileio.is_uri(value) and not os.path.isabs(value)):
        raise ConfigError(f"--param {key}={value!r}: give a URI (gs://bucket/...) or the absolute path of a volume "
                          "mounted in the pods")
    return value.rstrip("/")


def values(spec: dict[str, Any], overrides: dict[str, str]) -> dict[str, str]:
    """The pipeline parameter values that carry `overrides` (user keys) for this spec.

    Raises:
      ConfigError: a value the run could not use, or a parameter the spec lacks.
    """
    from histopath.data import spans

    spec_defaults = defaults(spec)
    result: dict[str, str] = {}
    if "data_root" in overrides:
        _need(spec_defaults, "data_root", "data_root")
        result["data_root"] = _cluster_path("data_root", overrides["data_root"])
    if "serving_dir" in overrides:
        current = _need(spec_defaults, "serving_model_dir", "serving_dir")
        model_dir = fileio.join(_cluster_path("serving_dir", overrides["serving_dir"]), current.rstrip("/")
                                .rsplit("/", 1)[-1])
        destination = json.loads(_need(spec_defaults, "push_destination", "serving_dir"))
        destination["filesystem"]["base_directory"] = model_dir
        result.update(serving_model_dir=model_dir, push_destination=json.dumps(destination, indent=2))
    if "preset" in overrides:
        result.update(_preset_values(spec_defaults, overrides["preset"]))
    settings = {}
    if "span_window" in overrides:
        spans.parse_window(overrides["span_window"])
        settings["window"] = overrides["span_window"].lower()
    if "min_new_patients" in overrides:
        try:
            settings["min_new_patients"] = int(overrides["min_new_patients"])
            if settings["min_new_patients"] < 0:
                raise ValueError
        except ValueError:
            raise ConfigError(f"--param min_new_patients={overrides['min_new_patients']!r}: "
                              "a whole number, 0 or more") from None
    if settings:
        current = json.loads(result.get("ingest_settings")
                             or _need(spec_defaults, "ingest_settings", next(iter(settings))))
        result["ingest_settings"] = json.dumps({**current, **settings}, sort_keys=True)
    return result


def _preset_values(spec_defaults: dict[str, Any], name: str) -> dict[str, str]:
    """The parameter values that run preset `name` (as shipped) on this spec's graph.

    Raises:
      ConfigError: an unknown preset, one that needs settings only `compile` takes (e.g.
        warm-start weights), one whose data set or models differ from the spec's, or a
        spec compiled without these parameters.
    """
    from google.protobuf import json_format

    from histopath.pipeline import config as pipeline_config, presets
    from histopath.pipeline.eval_config import build_eval_config

    preset = presets.get(name)
    if preset.needs:
        raise ConfigError(f"--param preset={name}: it needs {', '.join(preset.needs)}, which only "
                          f"`histopath compile --preset {name}` takes")
    chosen = pipeline_config.resolve(presets.layer(name), {"data_dir": "unused", "output_dir": "unused"})
    trainers = {key[len(TRAINER_PREFIX):-len("_settings")]: json.loads(value)
                for key, value in spec_defaults.items()
                if key.startswith(TRAINER_PREFIX) and key.endswith("_settings")}
    if not trainers:
        _need(spec_defaults, "trainer_<kind>_settings", "preset")
    first = next(iter(trainers.values()))
    compiled = {"data set": first.get("dataset"), "models": sorted(trainers)}
    wanted = {"data set": chosen.dataset, "models": sorted(chosen.models)}
    differ = [f"{key} {wanted[key]} (the spec's: {compiled[key]})" for key in compiled if compiled[key] != wanted[key]]
    if differ:
        raise ConfigError(f"--param preset={name}: {'; '.join(differ)}; a preset cannot change the pipeline's graph: "
                          f"compile a spec with --preset {name}")
    # The model keeps the spec's name (and so its serving folder): --param serving_dir moves it.
    result = {f"{TRAINER_PREFIX}{kind}_settings": json.dumps(
                  {**current, **pipeline_config.model_settings(chosen, kind), "model_name": current.get("model_name")},
                  sort_keys=True)
              for kind, current in trainers.items()}
    transform = json.loads(_need(spec_defaults, "transform_settings", "preset"))
    transform.update(image_size=chosen.image_size, stain_normalization=chosen.stain_normalization)
    result["transform_settings"] = json.dumps(transform, sort_keys=True)
    result["selection_rule"] = chosen.selection.rule
    eval_config = json_format.MessageToJson(build_eval_config(chosen), preserving_proto_field_name=True,
                                            sort_keys=True, indent=2)
    result.update({f"{EVALUATOR_PREFIX}{kind}_eval_config": eval_config for kind in trainers
                   if f"{EVALUATOR_PREFIX}{kind}_eval_config" in spec_defaults})
    ingest = json.loads(_need(spec_defaults, "ingest_settings", "preset"))
    ingest.update(splits=dict(chosen.splits), seed=chosen.seed, magnifications=list(chosen.magnifications),
                  bag_size=chosen.bag_size)
    result["ingest_settings"] = json.dumps(ingest, sort_keys=True)
    return result
