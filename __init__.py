"""compress-graph: compress ONNX vision models and compile them for edge devices.

Public API::

    from compress_graph import load, save, run_pipeline
    model = load("model.onnx")
    model, report = run_pipeline(model, "fold-bn,quant", calib="data.npz")
    save(model, "out/model.onnx")
"""

__version__ = "0.1.0"

import os as _os

# A build step writes nothing outside its output and opens no connection: onnxruntime (>= 1.20 on Linux) would
# otherwise write ~/.cache/Microsoft/DeveloperTools/.onnxruntime and start telemetry threads at session creation.
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from compress_graph.ir import Model, load, save  # noqa: E402
from compress_graph.ir.errors import (  # noqa: E402
    CompressGraphError,
    ModelError,
    TargetError,
    UsageError,
    VerificationError,
)

__all__ = [
    "Model",
    "load",
    "save",
    "run_pipeline",
    "CompressGraphError",
    "UsageError",
    "ModelError",
    "VerificationError",
    "TargetError",
    "__version__",
]


def run_pipeline(model, pipeline, **kwargs):
    """Run a pipeline text (e.g. ``"fold-bn,prune{ratio=0.3}"``) on a Model; see passes.pipeline.run_pipeline."""
    from compress_graph.passes.pipeline import run_pipeline as _run

    return _run(model, pipeline, **kwargs)
