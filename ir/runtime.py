"""Running a Model in onnxruntime: reference outputs, intermediate activations for calibration."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
import onnxruntime as ort
from compress_graph.ir.errors import ModelError
from compress_graph.ir.model import Model

ort.set_default_logger_severity(4)  # onnxruntime's native log lines never reach the user's stderr


def session(
    model: Model | onnx.ModelProto,
    extra_outputs: Iterable[str] = (),
    *,
    threads: int = 0,
    fused: bool = False,
) -> ort.InferenceSession:
    """An onnxruntime session for ``model``; ``extra_outputs`` exposes intermediate tensors as outputs too.

    By default the session computes the ONNX semantics, the same on every CPU (:func:`reference_level`): a
    quantized graph runs op by op (DequantizeLinear -> float op -> QuantizeLinear), never onnxruntime's fused
    integer kernels, which differ between CPUs (x86 without VNNI sums u8 x s8 pairs in int16 and saturates).
    ``fused=True`` is what onnxruntime on this machine runs by default (all graph optimizations): only for
    *reporting* that, never as the reference for a decision or a comparison.

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
    opts = session_options(threads)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if fused else reference_level(proto)
    try:
        sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"onnxruntime cannot load the model: {msg}") from None
    return _WeightsFed(sess, {k: np.ascontiguousarray(v) for k, v in held.items()}) if held else sess


#: Ops whose presence makes a graph "quantized": onnxruntime fuses them into CPU-specific integer kernels.
QUANT_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
    "MatMulInteger", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearConcat",
    "QLinearAveragePool", "QLinearGlobalAveragePool", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
})


def is_quantized(proto: onnx.ModelProto) -> bool:
    return any(n.op_type in QUANT_OPS for n in proto.graph.node) or any(
        n.op_type in QUANT_OPS for f in proto.functions for n in f.node)


def reference_level(proto: onnx.ModelProto) -> ort.GraphOptimizationLevel:
    """The graph optimization level whose results do not depend on the CPU.

    Quantized graphs: none (op by op; from level 2 on onnxruntime fuses QDQ groups into integer kernels whose
    results differ between CPUs). Float graphs: up to level 2 (fusions of the same float maths); level 3 adds
    NCHWc layouts whose block size (8 on AVX2, 16 on AVX-512) changes the summation order. Measured: outputs of
    the bundled models bit-identical between this machine and ``qemu-x86_64 -cpu Haswell`` at these levels,
    different at level 3 (float, ~1e-7 relative) and at level 2 on a QDQ model (0.12 absolute)."""
    if is_quantized(proto):
        return ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED


def session_options(threads: int = 0) -> ort.SessionOptions:
    """Options of every session the tool creates: onnxruntime's own logging silenced (errors reach the user as
    one line through :class:`ModelError`), one inter-op thread."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return opts


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
    sess = session(model, wanted, threads=threads)
    for feed in feeds:
        yield run(sess, feed, wanted)
