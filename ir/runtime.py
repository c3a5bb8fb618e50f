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
    """An onnxruntime session for ``model``; ``extra_outputs`` exposes intermediate tensors as outputs too.

    A large :class:`Model` (beyond protobuf's 2 GiB) keeps its big weights out of the serialized model: see
    :class:`_WeightsFed`."""
    held: dict[str, np.ndarray] = {}
    if isinstance(model, Model) and model.is_large():
        proto, held = model.export_split(as_inputs=True)
    else:
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
        sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"onnxruntime cannot load the model: {msg}") from None
    return _WeightsFed(sess, {k: np.ascontiguousarray(v) for k, v in held.items()}) if held else sess


class _WeightsFed:
    """A session of a large model whose big weights are graph inputs, fed on every run from the model's own arrays.

    onnxruntime copies initializers it is given (even external ones) but reads input feeds in place, so this keeps
    one copy of the weights in memory (memory-mapped from the data file where the model was loaded from one).
    Callers see the model's own inputs only."""

    def __init__(self, sess: ort.InferenceSession, weights: dict[str, np.ndarray]):
        self._sess = sess
        self._weights = weights

    def run(self, output_names, input_feed, *args, **kwargs):
        return self._sess.run(output_names, {**input_feed, **self._weights}, *args, **kwargs)

    def get_inputs(self):
        return [i for i in self._sess.get_inputs() if i.name not in self._weights]

    def __getattr__(self, name):
        return getattr(self._sess, name)


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
