"""histopath-tfx: a TFX pipeline that classifies breast histopathology images.

Every entry point of the project imports this package first, so this is the one place
that pins Keras 2 (``tf_keras``) before TensorFlow can be imported: TFX 1.16,
tf.Transform and TFMA do not work with Keras 3.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ start-up chatter (CUDA probes on a CPU-only machine) hides real errors.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"


def __getattr__(name: str):
    """The project's artifact types by their type names (`histopath.RunReport`,
    `histopath.IngestReport`): TFX's Kubeflow entrypoint imports an artifact's class by the
    type name it was compiled with. Imported on first use, so this package stays light."""
    if name in ("RunReport", "IngestReport"):
        from histopath.components import artifacts

        return {"RunReport": artifacts.RunReportArtifact, "IngestReport": artifacts.IngestReport}[name]
    raise AttributeError(f"module 'histopath' has no attribute {name!r}")
