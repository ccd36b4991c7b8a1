"""The model pushed last, as a baseline the candidates must not fall behind.

`LatestPushedModel` reads the serving directory (the exported-model contract) instead of
ML Metadata, so it runs on every orchestrator, open-source Kubeflow Pipelines included
(whose backend cannot run TFX's `Resolver` nodes). It takes the run's examples as input,
which ties it to the ingestion: a run whose data did not change finds it in the cache with
the same baseline, and so the Evaluators and everything after them too.

Its `model` output holds a copy of the newest version under `Format-Serving/` (custom
property `found` = 1, plus `version` and `source`), or nothing (`found` = 0) before the
first push. `Evaluator` is TFX's Evaluator whose executor ignores such an empty baseline
(then, as TFX does without a baseline, change thresholds are not applied).
"""

import json

from tfx import v1 as tfx
from tfx.components.evaluator import executor as evaluator_executor
from tfx.dsl.components.base import executor_spec
from tfx.types import standard_artifacts, standard_component_specs

from histopath import fileio
from histopath.models import exported

SERVING_MODEL_DIR = "Format-Serving"  # where TFX components look for a Model's SavedModel


@tfx.dsl.components.component
def LatestPushedModel(
    examples: tfx.dsl.components.InputArtifact[standard_artifacts.Examples],
    model: tfx.dsl.components.OutputArtifact[standard_artifacts.Model],
    serving_model_dir: tfx.dsl.components.Parameter[str],
) -> None:
    """Copies the newest complete version of `serving_model_dir` into `model`.

    Args:
      examples: the run's examples (only ties the cache to the ingestion).
      serving_model_dir: `<serving dir>/<model name>`, a path or URI.
    """
    del examples
    fileio.makedirs(model.uri)
    versions = exported.list_versions(serving_model_dir)
    if not versions:
        model.set_int_custom_property("found", 0)
        return
    source = fileio.join(serving_model_dir, str(versions[-1]))
    fileio.copy_tree(source, fileio.join(model.uri, SERVING_MODEL_DIR), last=[exported.SAVED_MODEL_FILE])
    info = exported.read_model_info(source)
    model.set_int_custom_property("found", 1)
    model.set_int_custom_property("version", versions[-1])
    model.set_string_custom_property("source", source)
    model.set_string_custom_property("model_kind", str(info.get("model_kind", "")))
    model.set_string_custom_property("trained_in", str(info.get("trained_in", "")))
    model.set_string_custom_property("model_info", json.dumps(info)[:20000])


class OptionalBaselineExecutor(evaluator_executor.Executor):
    """TFX's Evaluator executor, treating an empty `LatestPushedModel` as no baseline."""

    def Do(self, input_dict, output_dict, exec_properties):
        baseline = input_dict.get(standard_component_specs.BASELINE_MODEL_KEY) or []
        if baseline and not baseline[0].get_int_custom_property("found"):
            input_dict = {key: value for key, value in input_dict.items()
                          if key != standard_component_specs.BASELINE_MODEL_KEY}
        super().Do(input_dict, output_dict, exec_properties)


class Evaluator(tfx.components.Evaluator):
    """TFX's Evaluator with `OptionalBaselineExecutor`."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(OptionalBaselineExecutor)
