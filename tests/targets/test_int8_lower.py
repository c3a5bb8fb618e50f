"""QDQ -> integer Relax: IR shape, exactness against onnxruntime, refusals that stay float (issue 8)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest

tvm = pytest.importorskip("tvm")
from compress_graph.targets.int8 import LowerOptions, has_qdq, lower_qdq  # noqa: E402
from compress_graph.targets.int8.requant import emit_requant, fixed_point  # noqa: E402
from compress_graph.targets.int8.testing import (  # noqa: E402
    import_relax,
    layout_moves,
    ort_session,
    output_scales,
    quantize_qdq,
    random_input,
    save_float_model,
    vnni_target,
)
from tvm import relax  # noqa: E402

MODELS = Path(__file__).resolve().parents[2] / "models"
HOST = {"kind": "llvm", "num-cores": 2}  # generic x86: plain NCHW int8 convs


@pytest.fixture(scope="module")
def qdq_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("qdq")
    for name in ("resnet_s", "mobilenetv2_s", "yolo_s"):
        quantize_qdq(MODELS / f"{name}.onnx", out / f"{name}.onnx")
    return out


def _run_tvm(mod, target, feeds):
    ex = relax.build(mod, target=tvm.target.Target(target))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(v) for v in feeds.values()]).numpy()


def _assert_within_one_step(model_path, mod, target, seed=1):
    model = onnx.load(str(model_path))
    feeds = random_input(model, seed)
    got = _run_tvm(mod, target, feeds)
    want = ort_session(model_path).run(None, feeds)[0]
    step = output_scales(model)[0]
    assert np.isfinite(step)
    assert np.max(np.abs(got - want)) <= step * 1.001, f"more than one step ({step}) off onnxruntime"
    return got, want


def test_fixed_point_multiplier_is_accurate():
    m = np.array([1e-6, 3.3e-4, 0.0123, 0.5, 0.99999, 1.0, 7.25])
    mant, shift = fixed_point(m)
    assert np.all((mant >= 2**29) & (mant < 2**31))
    np.testing.assert_allclose(mant / 2.0 ** shift, m, rtol=2e-9)


def test_requant_rounds_half_to_even_like_onnxruntime():
    acc = np.array([-7, -5, -3, -1, 1, 3, 5, 7, 1000, -1000, 2**30, 123457], np.int32)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(acc.shape, "int32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(emit_requant(bb, x, np.float64(0.5), 10, "int8", ()))
        bb.emit_func_output(out)
    got = _run_tvm(bb.get(), HOST, {"x": acc})
    want = np.clip(np.round(acc.astype(np.float64) * 0.5) + 10, -128, 127)  # np.round: half to even
    np.testing.assert_array_equal(got, want)


_BINDING = re.compile(r'^\s*(\w+): R\.Tensor\(\(.*?\), dtype="(\w+)"\) = (R\.[\w.]+)\((\w+|metadata\S*), (\S+)')


def integer_dot_ops(text: str) -> list[tuple[str, str, str, str]]:
    """(op, input dtype, weight operand, result dtype) of every conv2d/matmul binding in Relax text."""
    dtypes, found = {}, []
    for line in text.splitlines():
        m = _BINDING.match(line)
        if not m:
            continue
        var, dtype, op, arg0, arg1 = m.groups()
        dtypes[var] = dtype
        if op in ("R.nn.conv2d", "R.matmul"):
            found.append((op, dtypes.get(arg0, "?"), arg1, dtype))
    return found


def test_rewritten_ir_has_integer_conv_and_matmul(qdq_dir):
    mod = import_relax(onnx.load(str(qdq_dir / "resnet_s.onnx")))
    assert has_qdq(mod)
    before = integer_dot_ops(mod.script())
    assert before and all(res == "float32" for *_, res in before)  # the importer runs fake-quant float
    low, stats = lower_qdq(mod, tvm.target.Target(HOST))
    text = low.script()
    ops = integer_dot_ops(text)
    assert [op for op, *_ in ops].count("R.nn.conv2d") == 13 and [op for op, *_ in ops].count("R.matmul") == 1
    for op, in_dtype, _, res in ops:
        assert in_dtype in ("uint8", "int8") and res == "int32", (op, in_dtype, res)
    assert all('out_dtype="int32"' in ln for ln in text.splitlines() if "R.nn.conv2d(" in ln)
    assert "R.dequantize(" in text and text.count("R.dequantize(") == 1  # only the float output remains
    assert stats["by_op"]["conv2d"] == 13 and stats["by_op"]["matmul"] == 1
    assert stats["float"] == 0 and stats["converted"] >= 20


@pytest.mark.parametrize("name", ["resnet_s", "mobilenetv2_s"])
def test_host_int8_matches_onnxruntime(qdq_dir, name):
    path = qdq_dir / f"{name}.onnx"
    low, stats = lower_qdq(import_relax(onnx.load(str(path))), tvm.target.Target(HOST))
    assert stats["float"] == 0
    _assert_within_one_step(path, low, HOST)


def test_float_requant_mode_matches_too(qdq_dir):
    path = qdq_dir / "resnet_s.onnx"
    low, _ = lower_qdq(import_relax(onnx.load(str(path))), tvm.target.Target(HOST),
                       LowerOptions(requant="float"))
    _assert_within_one_step(path, low, HOST, seed=2)


@pytest.mark.slow
def test_yolo_int8_matches_onnxruntime(qdq_dir):
    path = qdq_dir / "yolo_s.onnx"
    low, stats = lower_qdq(import_relax(onnx.load(str(path))), tvm.target.Target(HOST))
    assert stats["by_op"]["conv2d"] == 43 and stats["by_op"]["sigmoid"] == 39
    # the box decode's center_sum / 2 is a float function of one 8-bit tensor: a table, nothing stays float
    assert stats["float_ops"] == {} and stats["by_op"]["elementwise_table"] == 1
    text = low["main"].script()
    # SiLU's x * sigmoid(x) is one 256-entry table of x: 39 lookups (+1, the decode's / 2) and no tensor x tensor
    # integer product for them (the sigmoid tables alone would also be 39 lookups, plus 39 products; the 2 left
    # are the box decode's)
    assert text.count("R.take(") == 40
    consts = set(re.findall(r"(lv\w*): R\.Tensor\([^)]*\), dtype=\"int64\"\) = R\.astype\(metadata", text))
    products = [p for p in re.findall(r"R\.multiply\((lv\w*), (lv\w*)\)", text) if not consts & set(p)]
    assert len(products) == 2, products  # (requant multipliers are constants widened to int64: not counted)
    _assert_within_one_step(path, low, HOST)


def _softplus_model(path: Path) -> Path:
    """Conv -> Softplus -> Conv: onnxruntime's quantizer leaves Softplus float between QDQ borders."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.3, "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((16, 16, 3, 3)).astype(np.float32) * 0.1, "w2")
    b2 = numpy_helper.from_array(rng.standard_normal(16).astype(np.float32) * 0.1, "b2")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Softplus", ["c1"], ["s1"]),
        helper.make_node("Conv", ["s1", "w2", "b2"], ["y"], pads=[1, 1, 1, 1], strides=[2, 2]),
    ]
    return save_float_model(path, nodes, [1, 3, 16, 16], [1, 16, 8, 8], [w1, w2, b2], "softplus")


def test_op_without_integer_rule_stays_float_and_matches(tmp_path):
    path = quantize_qdq(_softplus_model(tmp_path / "fp32.onnx"), tmp_path / "qdq.onnx")
    low, stats = lower_qdq(import_relax(onnx.load(str(path))), tvm.target.Target(HOST))
    assert stats["by_op"].get("conv2d") == 2, stats
    assert stats["float"] >= 1
    assert any("softplus" in k or "log" in k or "exp" in k for k in stats["float_ops"]), stats
    _assert_within_one_step(path, low, HOST)


def test_project_quant_pass_output_lowers_and_matches(tmp_path):
    """The `quant` pass's QDQ form (explicit Relu, Clip with tensor bounds, float head) lowers too."""
    pytest.importorskip("compress_graph.passes.quant")
    from compress_graph import load, run_pipeline, save

    model, _ = run_pipeline(load(MODELS / "mobilenetv2_s.onnx"), "fold-bn,quant", calib=None, verify=False,
                            seed=0)
    path = tmp_path / "mobilenetv2_s_quant.onnx"
    save(model, path)
    proto = onnx.load(str(path))
    low, stats = lower_qdq(import_relax(proto), tvm.target.Target(HOST))
    assert stats["by_op"]["conv2d"] == 22  # every conv, its Clip(0, 6) folded into the 8-bit clip
    assert stats["float_ops"].get("nn.conv2d", 0) == 0
    feeds = random_input(proto)
    got = _run_tvm(low, HOST, feeds)
    want = ort_session(path).run(None, feeds)[0]
    # the head stays float: one step on each of its 8-bit inputs bounds the difference (what --verify-target allows)
    from compress_graph.targets.build import _output_scales

    assert np.max(np.abs(got - want)) <= _output_scales(proto)[0], (np.max(np.abs(got - want)), _output_scales(proto))


def _conv_transpose_model(path: Path, strides=(2, 2), pads=(1, 1, 1, 1), output_padding=(1, 1)) -> Path:
    """Conv -> Relu -> ConvTranspose (+bias) -> Relu: a pose/segmentation-style upsampling head."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(1)
    w1 = numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.3, "w1")
    wt = numpy_helper.from_array(rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.2, "wt")
    bt = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.2, "bt")
    out_hw = [(10 - 1) * s - p0 - p1 + 3 + op for s, p0, p1, op in
              zip(strides, pads[:2], pads[2:], output_padding, strict=True)]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("ConvTranspose", ["r1", "wt", "bt"], ["t"], strides=list(strides), pads=list(pads),
                         output_padding=list(output_padding)),
        helper.make_node("Relu", ["t"], ["y"]),
    ]
    return save_float_model(path, nodes, [1, 3, 10, 10], [1, 8, *out_hw], [w1, wt, bt], "convt")


@pytest.mark.parametrize("geometry", [((2, 2), (1, 1, 1, 1), (1, 1)), ((2, 2), (0, 0, 0, 0), (0, 0)),
                                      ((1, 1), (1, 0, 1, 2), (0, 0))])
def test_conv_transpose_lowers_to_integer_and_matches(tmp_path, geometry):
    """A strided ConvTranspose = one ordinary integer conv per output phase on the undilated input (no MAC on an
    inserted zero), interleaved; stride 1 = padding + an ordinary integer conv. Exact at the borders."""
    path = quantize_qdq(_conv_transpose_model(tmp_path / "fp32.onnx", *geometry), tmp_path / "qdq.onnx")
    low, stats = lower_qdq(import_relax(onnx.load(str(path))), tvm.target.Target(HOST))
    kind = "conv2d_transpose_phases" if geometry[0] != (1, 1) else "conv2d_transpose"
    assert stats["by_op"].get(kind) == 1 and stats["float"] == 0, stats
    assert "dilate" not in low.script() or kind == "conv2d_transpose"
    assert "R.nn.conv2d_transpose(" not in low.script()
    got, want = _assert_within_one_step(path, low, HOST)
    assert np.array_equal(got, want)  # bit-exact on this model: no tie falls differently


def _pool_and_prelu_model(path: Path) -> Path:
    """Conv -> LeakyRelu -> AveragePool 3x3/1 (zero padding counted) -> PRelu (per-channel slopes) ->
    AveragePool 2x2/2 -> Conv: face-detector / classifier ops that onnxruntime runs in float between Q/DQ."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(2)
    w1 = numpy_helper.from_array(rng.standard_normal((32, 3, 3, 3)).astype(np.float32) * 0.3, "w1")
    slope = numpy_helper.from_array(rng.uniform(0.05, 0.5, (32, 1, 1)).astype(np.float32), "slope")
    w2 = numpy_helper.from_array(rng.standard_normal((16, 32, 1, 1)).astype(np.float32) * 0.2, "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("LeakyRelu", ["c1"], ["l1"], alpha=0.1),
        helper.make_node("AveragePool", ["l1"], ["p1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                         count_include_pad=1),
        helper.make_node("PRelu", ["p1", "slope"], ["r1"]),
        helper.make_node("AveragePool", ["r1"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p2", "w2"], ["y"]),
    ]
    return save_float_model(path, nodes, [1, 3, 16, 16], [1, 16, 8, 8], [w1, slope, w2], "pools")


@pytest.mark.parametrize("target", [HOST, vnni_target()],
                         ids=["generic", "vnni-packed"])
def test_avg_pool_leaky_relu_prelu_lower_and_match(tmp_path, target):
    """The project's `quant` pass puts Q/DQ around PRelu (onnxruntime's quantizer leaves it float)."""
    from compress_graph import load, run_pipeline, save
    from compress_graph.targets.int8.packed import has_vnni, host_has_vnni

    path = tmp_path / "qdq.onnx"
    save(run_pipeline(load(_pool_and_prelu_model(tmp_path / "fp32.onnx")), "quant", verify=False, seed=0)[0], path)
    low, stats = lower_qdq(import_relax(onnx.load(str(path))), tvm.target.Target(target))
    assert stats["float_ops"] == {"nn.conv2d": 1}, stats  # only the float head conv
    assert stats["by_op"]["avg_pool2d"] == 2 and stats["by_op"]["leakyrelu"] == 1 and stats["by_op"]["prelu"] == 1
    if has_vnni(tvm.target.Target(target)):
        assert layout_moves(low) == 2  # pools and tables run on the packed tensor
        if not host_has_vnni():
            pytest.skip("this CPU has no AVX-512 VNNI: cannot run VNNI code")
    # the head conv stays float: one step on each of its inputs bounds the difference (what --verify-target uses)
    from compress_graph.targets.build import _output_scales

    model = onnx.load(str(path))
    feeds = random_input(model, 3)
    got = _run_tvm(low, target, feeds)
    want = ort_session(path).run(None, feeds)[0]
    assert np.max(np.abs(got - want)) <= _output_scales(model)[0]


def _qdq_chain_model(path: Path, chain: str) -> Path:
    """x -> Q -> DQ -> <float elementwise chain> -> Q -> DQ -> y: what the `quant` pass leaves around SiLU
    (x * sigmoid(x)) and hard-swish (x * clip(x + 3, 0, 6) / 6), or a chain over two 8-bit tensors ("two")."""
    from onnx import helper, numpy_helper

    def const(name, value, dtype=np.float32):
        return numpy_helper.from_array(np.array(value, dtype), name)

    inits = [const("s", 0.05), const("z", 128, np.uint8), const("s2", 0.03), const("z2", 100, np.uint8),
             const("three", 3.0), const("zero", 0.0), const("six", 6.0)]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"])]
    if chain == "silu":
        nodes += [helper.make_node("Sigmoid", ["xd"], ["sg"]), helper.make_node("Mul", ["xd", "sg"], ["f"])]
    elif chain == "hardswish":
        nodes += [helper.make_node("Add", ["xd", "three"], ["a"]),
                  helper.make_node("Clip", ["a", "zero", "six"], ["c"]),
                  helper.make_node("Mul", ["xd", "c"], ["m"]), helper.make_node("Div", ["m", "six"], ["f"])]
    else:  # x * sigmoid(x') with x' another quantization of x: two 8-bit sources, no single table
        nodes += [helper.make_node("QuantizeLinear", ["x", "s2", "z2"], ["x2q"]),
                  helper.make_node("DequantizeLinear", ["x2q", "s2", "z2"], ["x2d"]),
                  helper.make_node("Sigmoid", ["x2d"], ["sg"]), helper.make_node("Mul", ["xd", "sg"], ["f"])]
    nodes += [helper.make_node("QuantizeLinear", ["f", "s2", "z2"], ["fq"]),
              helper.make_node("DequantizeLinear", ["fq", "s2", "z2"], ["y"])]
    return save_float_model(path, nodes, [1, 8, 6, 6], [1, 8, 6, 6], inits, chain)


@pytest.mark.parametrize("chain", ["silu", "hardswish", "two"])
def test_float_chain_of_one_8bit_tensor_becomes_one_table(tmp_path, chain):
    path = _qdq_chain_model(tmp_path / "m.onnx", chain)
    low, stats = lower_qdq(import_relax(onnx.load(str(path))), tvm.target.Target(HOST))
    if chain == "two":
        assert "elementwise_table" not in stats["by_op"] and stats["float"] >= 2, stats
    else:
        assert stats["by_op"] == {"elementwise_table": 1} and stats["float"] == 0, stats
        assert low["main"].script().count("R.take(") == 1
    model = onnx.load(str(path))
    feeds = {"x": (np.random.default_rng(0).standard_normal((1, 8, 6, 6)) * 4).astype(np.float32)}
    got = _run_tvm(low, HOST, feeds)
    want = ort_session(path).run(None, feeds)[0]
    assert np.max(np.abs(got - want)) <= output_scales(model)[0] * 1.001


def _silu_split_model(path: Path) -> Path:
    """x -> Q -> DQ -> SiLU -> Split (channels 3 + 5) -> each part Q -> DQ at its own scale -> Concat -> QDQ -> y.
    YOLOv8's C2f runs SiLU then Split, and the `quant` pass quantizes each part on its own."""
    from onnx import helper, numpy_helper

    def const(name, value, dtype=np.float32):
        return numpy_helper.from_array(np.array(value, dtype), name)

    inits = [const("s", 0.05), const("z", 128, np.uint8), const("sa", 0.02), const("za", 20, np.uint8),
             const("sb", 0.03), const("zb", 10, np.uint8), const("split", [3, 5], np.int64)]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Sigmoid", ["xd"], ["sg"]), helper.make_node("Mul", ["xd", "sg"], ["f"]),
             helper.make_node("Split", ["f", "split"], ["fa", "fb"], axis=1),
             helper.make_node("QuantizeLinear", ["fa", "sa", "za"], ["faq"]),
             helper.make_node("DequantizeLinear", ["faq", "sa", "za"], ["ya"]),
             helper.make_node("QuantizeLinear", ["fb", "sb", "zb"], ["fbq"]),
             helper.make_node("DequantizeLinear", ["fbq", "sb", "zb"], ["yb"]),
             helper.make_node("Concat", ["ya", "yb"], ["c"], axis=1),
             helper.make_node("QuantizeLinear", ["c", "sb", "zb"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "sb", "zb"], ["y"])]
    return save_float_model(path, nodes, [1, 8, 6, 6], [1, 8, 6, 6], inits, "silu_split")


def test_split_of_a_tabulated_chain_splits_the_codes_and_looks_each_part_up(tmp_path):
    """SiLU -> Split -> one quantization per part: no float SiLU; the 8-bit codes are split and each part takes its
    own table (different scales), within one step of onnxruntime."""
    path = _silu_split_model(tmp_path / "m.onnx")
    low, stats = lower_qdq(import_relax(onnx.load(str(path))), tvm.target.Target(HOST))
    assert stats["float"] == 0 and stats["by_op"].get("split") == 2, stats
    assert low["main"].script().count("R.take(") == 2
    model = onnx.load(str(path))
    feeds = {"x": (np.random.default_rng(0).standard_normal((1, 8, 6, 6)) * 4).astype(np.float32)}
    got = _run_tvm(low, HOST, feeds)
    want = ort_session(path).run(None, feeds)[0]
    assert np.max(np.abs(got - want)) <= output_scales(model)[0] * 1.001
