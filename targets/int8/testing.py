"""QDQ reference models and onnxruntime runs for the int8 tests and bench/int8.

``quantize_qdq`` is onnxruntime's static quantizer in the configuration the issue fixes (QDQ, per-channel,
uint8 activations, int8 weights) with a few seeded random calibration inputs; the project's ``quant`` pass
emits the same form.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx


def vnni_target(cores: int = 2) -> dict:
    """A VNNI x86 target dict for tests and bench: this machine's own CPU where it has AVX-512 VNNI (code built
    for it runs here; a fixed VNNI CPU such as znver4 may use instructions another VNNI CPU lacks, e.g. SSE4a on
    Intel), else cascadelake for build-only checks."""
    from compress_graph.targets.int8.packed import host_has_vnni

    mcpu = "cascadelake"
    if host_has_vnni():
        import tvm

        mcpu = str(tvm.target.codegen.llvm_get_system_cpu())
    return {"kind": "llvm", "mcpu": mcpu, "mattr": ["+avx512vnni"], "num-cores": cores}


def input_spec(model: onnx.ModelProto) -> tuple[str, list[int]]:
    """Name and static shape of the (single) graph input."""
    inits = {i.name for i in model.graph.initializer}
    inp = next(i for i in model.graph.input if i.name not in inits)
    return inp.name, [d.dim_value for d in inp.type.tensor_type.shape.dim]


def random_input(model: onnx.ModelProto, seed: int = 1) -> dict[str, np.ndarray]:
    name, shape = input_spec(model)
    return {name: np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


def quantize_qdq(fp32_path: str | Path, out_path: str | Path, *, n_calib: int = 4, seed: int = 0,
                 per_channel: bool = True, reduce_range: bool = False) -> Path:
    """``fp32_path`` -> QDQ model at ``out_path`` (BN folded by onnxruntime's pre-processing); ``reduce_range``:
    7-bit weights (onnxruntime's codes within [-64, 64])."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(str(fp32_path))
    name, shape = input_spec(model)
    rng = np.random.default_rng(seed)
    feeds = [{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n_calib)]

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    out_path = Path(out_path)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out_path), _Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, reduce_range=reduce_range)
    return out_path


def ort_session(path: str | Path, threads: int = 2, fused: bool = False):
    """onnxruntime on the model at ``path``: the ONNX QDQ semantics op by op (the reference every int8 result is
    compared with), or with ``fused=True`` its fused integer kernels as this CPU runs them (bench timings)."""
    from compress_graph.ir import runtime

    return runtime.session(onnx.load(str(path)), threads=threads, fused=fused)


def output_scales(model: onnx.ModelProto) -> list[float]:
    """Scale of the DequantizeLinear producing each graph output (1 quantization step), NaN if none."""
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    scales = []
    for out in model.graph.output:
        node = producers.get(out.name)
        if node is not None and node.op_type == "DequantizeLinear" and node.input[1] in inits:
            scales.append(float(inits[node.input[1]].reshape(-1)[0]))
        else:
            scales.append(float("nan"))
    return scales


def import_relax(model: onnx.ModelProto):
    """The Relax module exactly as the targets layer imports it."""
    from tvm.relax.frontend.onnx import from_onnx

    name, shape = input_spec(model)
    return from_onnx(model, shape_dict={name: shape}, keep_params_in_input=False)


def layout_moves(mod) -> int:
    """How many times the lowered ``mod`` changes a tensor's layout: ``layout_transform`` calls plus the packed
    lowering's input packs (``pack_input`` kernels). A model that stays packed end to end has 2."""
    import re

    text = mod["main"].script()
    return text.count("R.layout_transform(") + len(re.findall(r"R\.call_tir\((?:cls\.)?pack_input\d*,", text))


def save_float_model(path: str | Path, nodes, x_shape, y_shape, initializers, name: str = "model") -> Path:
    """A one-input ("x"), one-output ("y") float32 ONNX model (opset 17) saved at ``path``: test models."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y_shape))],
                              list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return Path(path)



def run_host_library(library: str | Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The output of a one-output ``host`` library (a Relax VM executable) on this CPU for ``feeds``."""
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(library)), tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(v) for v in feeds.values()]).numpy()
