"""Running a Model in onnxruntime: reference outputs, intermediate activations for calibration."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
import onnxruntime as ort
from compress_graph.ir.errors import ModelError
from compress_graph.ir.model import Model


def session(
    model: Model | onnx.ModelProto,
    extra_outputs: Iterable[str] = (),
    *,
    threads: int = 0,
    optimize: bool = True,
) -> ort.InferenceSession:
    """An onnxruntime session for ``model``; ``extra_outputs`` exposes intermediate tensors as outputs too."""
    proto = model.to_onnx() if isinstance(model, Model) else model
    extra = [n for n in dict.fromkeys(extra_outputs) if n not in {o.name for o in proto.graph.output}]
    if extra:
        copy = onnx.ModelProto()
        copy.CopyFrom(proto)
        proto = copy
        for name in extra:
            proto.graph.output.append(onnx.ValueInfoProto(name=name))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"onnxruntime cannot load the model: {msg}") from None


def run(sess: ort.InferenceSession, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict:
    names = outputs or [o.name for o in sess.get_outputs()]
    try:
        values = sess.run(names, feeds)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"onnxruntime failed to run the model: {msg}") from None
    return dict(zip(names, values))


def activations(model: Model | onnx.ModelProto, names: Iterable[str], feeds: Iterable[dict[str, np.ndarray]],
                *, threads: int = 0):
    """Yield, batch by batch, ``{tensor name: value}`` for the requested intermediate tensors.

    One session for all batches; memory holds one batch of the requested tensors at a time, so callers that reduce
    statistics as they go stay bounded whatever the number of samples.
    """
    wanted = list(dict.fromkeys(names))
    sess = session(model, wanted, threads=threads, optimize=False)
    for feed in feeds:
        yield run(sess, feed, wanted)
