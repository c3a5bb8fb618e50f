"""A float conv whose fused kernel also computes another branch's bias + relu for its residual add (a pose or U-Net
decoder: an upsampling ConvTranspose with bias and Relu, added to a 1x1 lateral conv). FuseOps puts that branch's
elementwise blocks before the conv in one kernel; the conv schedules took only a pad there and left the kernel to
the sampled default (pose_s: 10 % of its host time). The branch now moves into the epilogue."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

tvm = pytest.importorskip("tvm")
from compress_graph.targets import build_for_target  # noqa: E402


def _decoder(channels: int = 16, hw: int = 8) -> onnx.ModelProto:
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(rng.standard_normal((channels, channels, 2, 2)).astype(np.float32) * 0.3, "wt"),
             numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "bt"),
             numpy_helper.from_array(rng.standard_normal((channels, channels, 1, 1)).astype(np.float32) * 0.3, "wl"),
             numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "bl")]
    nodes = [helper.make_node("ConvTranspose", ["x", "wt", "bt"], ["up"], strides=[2, 2], kernel_shape=[2, 2]),
             helper.make_node("Relu", ["up"], ["upr"]),
             helper.make_node("Conv", ["skip", "wl", "bl"], ["lat"], kernel_shape=[1, 1]),
             helper.make_node("Add", ["upr", "lat"], ["y"])]
    graph = helper.make_graph(
        nodes, "decoder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, hw, hw]),
         helper.make_tensor_value_info("skip", TensorProto.FLOAT, [1, channels, 2 * hw, 2 * hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 2 * hw, 2 * hw])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("target", ["host{isa=avx2,cores=1}", "arm{cpu=cortex-a72,cores=1}"])
def test_side_branch_before_the_conv_is_hand_scheduled_and_matches(tmp_path, target):
    from compress_graph.targets import host
    from compress_graph.targets.runners import qemu_available

    if target.startswith("arm") and qemu_available("aarch64"):
        pytest.skip(qemu_available("aarch64"))
    model = _decoder()
    run_here = not target.startswith("host") or not host.missing_features("avx2")
    section = build_for_target(model, target, tmp_path / "out", verify_target=run_here)
    sched = section["schedule"]
    assert not sched.get("fp32_hand_failed"), sched
    sampled = [k for k, v in section["kernel_schedules"].items() if "conv2d" in k and v != "hand-scheduled fp32"]
    assert not sampled, section["kernel_schedules"]
    if run_here:
        assert section["verification"]["status"] == "passed", section["verification"]
