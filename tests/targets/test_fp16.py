"""arm{fp16=true}: float models run float16 inside (targets/half.py), float32 at the library's edges.

The ONNX rewrite is checked on its own (onnxruntime runs the float16 model; Resize's scales stay float32; the
signature is unchanged), the option is refused where the core has no FP16 arithmetic, a QDQ model is left as it
is (and the report says so), and a net with every float kernel family the hand schedules know (kxk and 1x1 convs,
a stride-2 depthwise conv on the float16 deinterleave, SiLU through the float16 sigmoid, a max pool, a transposed
conv, a Resize, Concat, global pool, Gemm) is built for cortex-a76 and compared with onnxruntime's float32 run of
the original model under qemu, within the float16 tolerance (half.FP16_REL of each output's largest magnitude).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from compress_graph.ir.errors import UsageError
from compress_graph.targets import half
from onnx import TensorProto, helper, numpy_helper


def _net(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)

    def w(name, *shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [w("w0", 16, 3, 3, 3), w("b0", 16), w("wd", 16, 1, 3, 3), w("bd", 16), w("w1", 24, 16, 1, 1), w("b1", 24),
             w("wt", 24, 8, 2, 2), w("w2", 16, 32, 3, 3), w("b2", 16), w("fc", 16, 5), w("fcb", 5),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1] * 4, strides=[2, 2]),           # 16 x 16x16
        helper.make_node("Sigmoid", ["c0"], ["s0"]), helper.make_node("Mul", ["c0", "s0"], ["a0"]),  # SiLU
        helper.make_node("Conv", ["a0", "wd", "bd"], ["d0"], pads=[1] * 4, strides=[2, 2], group=16),  # 16 x 8x8
        helper.make_node("Clip", ["d0", "lo", "hi"], ["r0"]),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"]),                                        # 24 x 8x8
        helper.make_node("MaxPool", ["c1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),            # 24 x 4x4
        helper.make_node("ConvTranspose", ["p1", "wt"], ["t1"], strides=[2, 2]),                     # 8 x 8x8
        helper.make_node("Resize", ["t1", "", "scales"], ["u1"], mode="nearest"),                    # 8 x 16x16
        helper.make_node("Resize", ["r0", "", "scales"], ["u0"], mode="nearest"),                    # 16 x 16x16
        helper.make_node("Concat", ["u0", "u1", "a0"], ["cat"], axis=1),                             # 40 -> see w2
        helper.make_node("Conv", ["cat", "w2", "b2"], ["c2"], pads=[1] * 4),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"]),
    ]
    # Concat of 16 + 8 + 16 channels = 40: w2 takes 40 input channels
    inits[7] = w("w2", 16, 40, 3, 3, scale=0.1)
    graph = helper.make_graph(nodes, "fp16", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5]),
                               helper.make_tensor_value_info("c1", TensorProto.FLOAT, [1, 24, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def test_to_half_keeps_the_signature_and_the_numerics():
    from compress_graph.ir import runtime

    model = _net()
    converted, counts = half.to_half(model)
    onnx.checker.check_model(converted)
    assert [i.type.tensor_type.elem_type for i in converted.graph.input] == [TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in converted.graph.output] == [TensorProto.FLOAT] * 2
    inits = {t.name: t.data_type for t in converted.graph.initializer}
    assert inits["scales"] == TensorProto.FLOAT  # Resize's scales: float32 by the ONNX spec
    assert inits["w0"] == inits["fc"] == inits["lo"] == TensorProto.FLOAT16
    assert counts["initializers"] == len(inits) - 1
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    want = runtime.session(model).run(None, {"x": x})
    got = runtime.session(converted).run(None, {"x": x})
    for a, b in zip(got, want):
        assert a.dtype == np.float32 and a.shape == b.shape
        assert np.max(np.abs(a - b)) <= half.FP16_REL * np.max(np.abs(b)), np.max(np.abs(a - b))
        assert np.max(np.abs(a - b)) > 0  # float16 inside: not the float32 run


def test_to_half_refuses_a_qdq_model():
    model = _net()
    node = helper.make_node("QuantizeLinear", ["y", "qs"], ["q"])
    model.graph.node.append(node)
    with pytest.raises(ValueError, match="QDQ"):
        half.to_half(model)


def test_fp16_needs_a_core_with_fp16_arithmetic():
    from compress_graph.targets import REGISTRY, parse_target

    assert parse_target("arm{cpu=cortex-a76,fp16=true}", REGISTRY).options["fp16"] == "true"
    assert parse_target("arm{cpu=cortex-a55,fp16=true}", REGISTRY).options["fp16"] == "true"
    for cpu in ("cortex-a72", "cortex-a53"):
        with pytest.raises(UsageError, match="FP16 arithmetic"):
            parse_target(f"arm{{cpu={cpu},fp16=true}}", REGISTRY)
    with pytest.raises(UsageError, match="fp16=yes is not valid"):
        parse_target("arm{cpu=cortex-a76,fp16=yes}", REGISTRY)


@pytest.mark.slow
def test_fp16_library_matches_onnxruntime_under_qemu(tmp_path):
    pytest.importorskip("tvm")
    from compress_graph.targets import build_for_target
    from compress_graph.targets.runners import qemu_available

    model = _net()
    section = build_for_target(model, "arm{cpu=cortex-a76,cores=1,fp16=true}", tmp_path / "out",
                               verify_target=not qemu_available("aarch64"))
    assert section["fp16"]["applied"] is True
    sched = section["schedule"]
    assert not sched.get("fp32_hand_failed"), sched
    kinds = section["kernel_schedules"]
    # every conv (the depthwise one on the float16 deinterleave), the pool and the transposed conv's phases
    hand = [k for k, v in kinds.items() if v == "hand-scheduled fp32"]
    assert any("depthwise_conv2d_s2" in k for k in hand), kinds
    assert any("max_pool" in k for k in hand), kinds
    assert sum("conv2d" in k for k in hand) >= 5, kinds
    if qemu_available("aarch64"):
        pytest.skip(qemu_available("aarch64"))
    ver = section["verification"]
    assert ver["status"] == "passed", ver
    assert ver["max_abs_err"] > 1e-5  # float16 arithmetic, not float32
    assert ver["atol"] >= half.FP16_REL * 0.1


@pytest.mark.slow
def test_fp16_is_not_applied_to_a_qdq_model(tmp_path):
    pytest.importorskip("tvm")
    from compress_graph.targets import build_for_target
    from compress_graph.targets.int8.testing import quantize_qdq

    onnx.save(_net(), tmp_path / "net.onnx")
    qdq = onnx.load(str(quantize_qdq(tmp_path / "net.onnx", tmp_path / "net.qdq.onnx")))
    section = build_for_target(qdq, "arm{cpu=cortex-a76,cores=1,fp16=true}", tmp_path / "out")
    assert section["fp16"] == {"applied": False, "reason": section["fp16"]["reason"]}
    assert "QDQ" in section["fp16"]["reason"]
    assert section["int8"]["converted"] > 0


def test_cli_refuses_fp16_on_a72_before_writing_anything(tmp_path, capsys):
    from compress_graph.cli import main

    model = tmp_path / "net.onnx"
    onnx.save(_net(), model)
    code = main(["run", str(model), "--passes", "", "--target", "arm{cpu=cortex-a72,fp16=true}",
                 "-o", str(tmp_path / "out")])
    assert code == 2
    assert "FP16 arithmetic" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("out_channels", [16, 24])
def test_fp16_pointwise_conv_at_a_width_off_the_vector(tmp_path, out_channels):
    """A 1x1 conv over 14x14 = 196 pixels, no whole number of 8-half vectors: with 16 output channels it takes the
    channel-vector tile (the pixel vectors would be 7 part-filled ones: PP-LCNet's 256-channel convs spilled),
    with 24 the pixel-vector tile narrowed to one half-width vector; both match onnxruntime under qemu."""
    pytest.importorskip("tvm")
    from compress_graph.targets import build_for_target
    from compress_graph.targets.runners import qemu_available

    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array((rng.standard_normal((out_channels, 32, 1, 1)) * 0.2).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(out_channels).astype(np.float32), "b")]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"]), helper.make_node("Relu", ["c"], ["y"])], "pw",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 14, 14])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, out_channels, 14, 14])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    verify = not qemu_available("aarch64")
    section = build_for_target(model, "arm{cpu=cortex-a76,cores=1,fp16=true}", tmp_path / "out",
                               verify_target=verify)
    assert list(section["kernel_schedules"].values()).count("hand-scheduled fp32") == 1, section["kernel_schedules"]
    if verify:
        assert section["verification"]["status"] == "passed", section["verification"]


def test_to_half_rewrites_constants_and_casts():
    """Constant (value and value_float), ConstantOfShape (its float value, and its float32-zeros default) and a
    Cast to float become float16; the graph stays valid and runs in onnxruntime with float32 at its edges."""
    from compress_graph.ir import runtime

    shape = numpy_helper.from_array(np.array([1, 4], np.int64), "shape")
    nodes = [helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.full((1, 4), 2.0, np.float32))),
             helper.make_node("Constant", [], ["kf"], value_float=0.5),
             helper.make_node("ConstantOfShape", ["shape"], ["ones"],
                              value=numpy_helper.from_array(np.ones(1, np.float32))),
             helper.make_node("ConstantOfShape", ["shape"], ["zeros"]),
             helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["x", "k"], ["a"]), helper.make_node("Mul", ["a", "kf"], ["b"]),
             helper.make_node("Add", ["b", "ones"], ["c"]), helper.make_node("Add", ["c", "zeros"], ["d"]),
             helper.make_node("Add", ["d", "nf"], ["y"])]
    graph = helper.make_graph(nodes, "consts", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                                                helper.make_tensor_value_info("n", TensorProto.INT32, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    converted, counts = half.to_half(model)
    onnx.checker.check_model(converted)
    assert counts["constants"] == 4 and counts["casts"] == 1
    feed = {"x": np.array([[1.0, -2.0, 3.5, 0.25]], np.float32), "n": np.array([[1, 2, 3, 4]], np.int32)}
    got = runtime.session(converted).run(None, feed)[0]
    np.testing.assert_allclose(got, runtime.session(model).run(None, feed)[0], rtol=1e-3)
    assert got.dtype == np.float32
