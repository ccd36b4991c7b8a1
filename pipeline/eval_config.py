"""The TFMA evaluation both candidates get: same split, metrics, slices and thresholds."""

from __future__ import annotations

import tensorflow_model_analysis as tfma

from histopath.components.tfma_results import CANDIDATE_MODEL_NAME
from histopath.data import features
from histopath.pipeline.config import PipelineConfig

EVAL_SPLIT = "test"  # patients never seen in training nor in threshold/LR selection
BASELINE_MODEL_NAME = "baseline"  # the model pushed last, when there is one
ROC_THRESHOLDS = 1000


def build_eval_config(config: PipelineConfig) -> tfma.EvalConfig:
    """EvalConfig for one candidate (plus the last pushed model as baseline)."""
    model_spec = dict(
        signature_name="serving_examples",
        label_key=features.LABEL,
        # The probability re-centred on the model's decision threshold (see export.py):
        # AUC is unchanged and the threshold metrics describe the model as deployed.
        prediction_key="decision_score",
    )
    thresholds = config.thresholds
    auc_threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": thresholds.min_auc}),
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER,
            absolute={"value": -thresholds.max_auc_drop_vs_pushed},
        ),
    )
    balanced_accuracy_threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(
            lower_bound={"value": thresholds.min_balanced_accuracy}
        )
    )
    # Thresholds judge the overall slice only: one patient's images are usually all of one
    # class, where AUC and balanced accuracy are undefined.
    overall = tfma.SlicingSpec()

    def on_overall_slice(threshold: tfma.MetricThreshold) -> list[tfma.PerSliceMetricThreshold]:
        return [tfma.PerSliceMetricThreshold(slicing_specs=[overall], threshold=threshold)]

    slicing_specs = [overall, tfma.SlicingSpec(feature_keys=[features.PATIENT_ID])]
    if config.dataset == "breakhis":
        slicing_specs.append(tfma.SlicingSpec(feature_keys=[features.MAGNIFICATION]))
    return tfma.EvalConfig(
        model_specs=[
            tfma.ModelSpec(name=CANDIDATE_MODEL_NAME, **model_spec),
            tfma.ModelSpec(name=BASELINE_MODEL_NAME, is_baseline=True, **model_spec),
        ],
        slicing_specs=slicing_specs,
        metrics_specs=[
            tfma.MetricsSpec(
                metrics=[
                    tfma.MetricConfig(class_name="ExampleCount"),
                    tfma.MetricConfig(
                        class_name="AUC", per_slice_thresholds=on_overall_slice(auc_threshold)
                    ),
                    tfma.MetricConfig(class_name="BinaryAccuracy"),
                    tfma.MetricConfig(
                        class_name="BalancedAccuracy",
                        per_slice_thresholds=on_overall_slice(balanced_accuracy_threshold),
                    ),
                    tfma.MetricConfig(class_name="Precision"),
                    tfma.MetricConfig(class_name="Recall"),
                    tfma.MetricConfig(class_name="Specificity"),
                    tfma.MetricConfig(
                        class_name="ConfusionMatrixPlot",
                        config=f'{{"num_thresholds": {ROC_THRESHOLDS}}}',
                    ),
                ],
            )
        ],
    )
