"""Every prune handler on a hand-built graph: pruning planted zero-importance channels must not change the outputs
(within 1e-5 against onnxruntime on the original), and must remove the planted channels, not others."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

sys.path.insert(0, str(Path(__file__).parent))
from prune_helpers import Builder, prune_and_compare  # noqa: E402

L1 = "prune{{ratio={r},criterion=l1,reconstruct=false}}"


def _weight_shape(model, name):
    return next(list(t.values.shape) for t in model.graph.tensors().values() if t.name.startswith(name + ".weight"))


def _conv_weight(model, node_name):
    node = next(n for n in model.graph.nodes if n.name == node_name)
    return np.asarray(node.inputs[1].values)


def test_residual_add(tmp_path):
    b = Builder()
    c1 = b.conv("x", 4, 8)
    r1 = b.node("Relu", [c1])
    c2 = b.conv(r1, 8, 8)
    c3 = b.conv("x", 4, 8, k=1)
    add = b.node("Add", [c2, c3])
    r2 = b.node("Relu", [add])
    b.conv(r2, 8, 6, out="y")
    # residual group: channel 2 of c2, c3 and the Add; inner group: channel 5 of c1
    b.zero_rows(f"{c2}.weight", [2]), b.zero_rows(f"{c2}.bias", [2]), b.zero_rows(f"{c3}.weight", [2])
    b.zero_rows(f"{c3}.bias", [2]), b.zero_rows("conv7.weight", [2], axis=1)
    b.zero_rows(f"{c1}.weight", [5]), b.zero_rows(f"{c2}.weight", [5], axis=1)
    m = b.model(tmp_path, [1, 4, 8, 8], ["y"])
    pruned, stats = prune_and_compare(m, L1.format(r=0.125))
    assert stats["units_removed"] == 2
    assert _conv_weight(pruned, c2).shape == (7, 7, 3, 3)
    assert _conv_weight(pruned, c3).shape[0] == 7


def test_concat_offsets(tmp_path):
    b = Builder(1)
    a = b.conv("x", 4, 6)
    c = b.conv("x", 4, 5)
    cat = b.node("Concat", [a, c], axis=1)
    r = b.node("Relu", [cat])
    b.conv(r, 11, 3, out="y")
    b.zero_rows("conv5.weight", [1, 6 + 3], axis=1)  # consumer-side zeros only: a wrong offset changes y
    m = b.model(tmp_path, [1, 4, 6, 6], ["y"])
    pruned, stats = prune_and_compare(m, L1.format(r=2 / 11))
    assert _conv_weight(pruned, a).shape[0] == 5 and _conv_weight(pruned, c).shape[0] == 4


def _split_model(tmp_path, opset):
    b = Builder(2)
    c = b.conv("x", 4, 8)
    sizes = (4, 4) if opset >= 18 else (3, 5)
    if opset >= 18:
        p, q = b.node("Split", [c], n_out=2, axis=1, num_outputs=2)
    elif opset >= 13:
        p, q = b.node("Split", [c, b.init("split", np.array(sizes))], n_out=2, axis=1)
    else:
        p, q = b.node("Split", [c], n_out=2, axis=1, split=list(sizes))
    b.conv(p, sizes[0], 2, out="y1")
    b.conv(q, sizes[1], 2, out="y2")
    b.zero_rows("conv3.weight", [1], axis=1), b.zero_rows("conv4.weight", [2], axis=1)
    return b.model(tmp_path, [1, 4, 6, 6], ["y1", "y2"], opset=opset, name=f"split{opset}.onnx")


def test_split(tmp_path):
    for opset in (11, 13, 18):
        prune_and_compare(_split_model(tmp_path, opset), L1.format(r=0.25))


def test_depthwise(tmp_path):
    b = Builder(3)
    c1 = b.conv("x", 4, 8, k=1)
    r = b.node("Relu", [c1])
    dw = b.conv(r, 8, 8, group=8)
    r2 = b.node("Clip", [dw, b.init("lo", np.float32(0)), b.init("hi", np.float32(6))])
    b.conv(r2, 8, 6, k=1, out="y")
    b.zero_rows(f"{c1}.weight", [3]), b.zero_rows(f"{c1}.bias", [3]), b.zero_rows(f"{dw}.bias", [3])
    b.zero_rows("conv5.weight", [3], axis=1)
    m = b.model(tmp_path, [1, 4, 8, 8], ["y"])
    pruned, _ = prune_and_compare(m, L1.format(r=0.125))
    node = next(n for n in pruned.graph.nodes if n.name == dw)
    assert node.attrs["group"] == 7 and node.inputs[1].values.shape == (7, 1, 3, 3)


def test_depthwise_multiplier(tmp_path):
    b = Builder(4)
    c1 = b.conv("x", 4, 8, k=1)
    dw = b.conv(c1, 8, 16, group=8)
    b.conv(dw, 16, 6, k=1, out="y")
    b.zero_rows(f"{c1}.weight", [3]), b.zero_rows(f"{c1}.bias", [3])
    b.zero_rows(f"{dw}.weight", [6, 7]), b.zero_rows(f"{dw}.bias", [6, 7])
    b.zero_rows("conv3.weight", [6, 7], axis=1)
    m = b.model(tmp_path, [1, 4, 8, 8], ["y"])
    prune_and_compare(m, L1.format(r=0.125))


def test_group_conv(tmp_path):
    b = Builder(5)
    c1 = b.conv("x", 4, 8, k=1)
    g = b.conv(c1, 8, 8, group=2)
    b.conv(g, 8, 6, k=1, out="y")
    # input unit local 1 (channels 1 and 5), output unit local 2 (channels 2 and 6)
    b.zero_rows(f"{c1}.weight", [1, 5]), b.zero_rows(f"{c1}.bias", [1, 5]), b.zero_rows(f"{g}.weight", [1], axis=1)
    b.zero_rows(f"{g}.weight", [2, 6]), b.zero_rows(f"{g}.bias", [2, 6]), b.zero_rows("conv3.weight", [2, 6], axis=1)
    m = b.model(tmp_path, [1, 4, 8, 8], ["y"])
    pruned, _ = prune_and_compare(m, L1.format(r=0.25))
    node = next(n for n in pruned.graph.nodes if n.name == g)
    assert node.attrs["group"] == 2 and node.inputs[1].values.shape == (6, 3, 3, 3)


def test_conv_transpose(tmp_path):
    b = Builder(6)
    c1 = b.conv("x", 4, 8)
    r = b.node("Relu", [c1])
    wt = b.init("ct.weight", b.rng.standard_normal((8, 6, 2, 2)).astype(np.float32))
    bt = b.init("ct.bias", b.rng.standard_normal(6).astype(np.float32))
    ct = b.node("ConvTranspose", [r, wt, bt], kernel_shape=[2, 2], strides=[2, 2])
    r2 = b.node("Relu", [ct])
    b.conv(r2, 6, 3, out="y")
    b.zero_rows(f"{c1}.weight", [2]), b.zero_rows(f"{c1}.bias", [2]), b.zero_rows("ct.weight", [2])
    b.zero_rows("ct.weight", [4], axis=1), b.zero_rows("ct.bias", [4]), b.zero_rows("conv5.weight", [4], axis=1)
    m = b.model(tmp_path, [1, 4, 6, 6], ["y"])
    pruned, stats = prune_and_compare(m, L1.format(r=1 / 6))
    assert stats["units_removed"] == 2


def test_flatten_gemm(tmp_path):
    b = Builder(7)
    c = b.conv("x", 3, 4, pads=[0, 0, 0, 0])
    r = b.node("Relu", [c])
    f = b.node("Flatten", [r], axis=1)
    b.gemm(f, 36, 5, out="y")
    b.zero_rows("gemm4.weight", range(9, 18), axis=1)  # consumer-side only: a wrong mapping changes y
    m = b.model(tmp_path, [1, 3, 5, 5], ["y"])
    pruned, _ = prune_and_compare(m, L1.format(r=0.25))
    assert pruned.graph.nodes[-1].inputs[1].values.shape == (5, 27)


def test_transpose_reshape_gemm(tmp_path):
    """MTCNN-style flatten: features reach the Gemm in (W, H, C) order; the right Gemm rows must go."""
    b = Builder(8)
    c = b.conv("x", 3, 4, pads=[0, 0, 0, 0])
    t = b.node("Transpose", [c], perm=[0, 3, 2, 1])
    f = b.node("Reshape", [t, b.init("shape", np.array([1, -1], dtype=np.int64))])
    b.gemm(f, 36, 5, out="y", trans_b=0)
    feats = [(w * 3 + h) * 4 + 1 for w in range(3) for h in range(3)]
    b.zero_rows("gemm4.weight", feats, axis=0)
    m = b.model(tmp_path, [1, 3, 5, 5], ["y"])
    prune_and_compare(m, L1.format(r=0.25))


def test_channel_shuffle(tmp_path):
    b = Builder(9)
    c = b.conv("x", 4, 8, k=1)
    r = b.node("Reshape", [c, b.init("s5", np.array([1, 2, 4, 6, 6], dtype=np.int64))])
    t = b.node("Transpose", [r], perm=[0, 2, 1, 3, 4])
    s = b.node("Reshape", [t, b.init("s4", np.array([1, 8, 6, 6], dtype=np.int64))])
    b.conv(s, 8, 3, out="y")
    # conv channels 1 and 5 (local 1 of both shuffle groups) land at shuffled channels 2 and 3
    b.zero_rows("conv5.weight", [2, 3], axis=1)
    m = b.model(tmp_path, [1, 4, 6, 6], ["y"])
    pruned, stats = prune_and_compare(m, L1.format(r=0.25))
    assert _conv_weight(pruned, c).shape[0] == 6


def test_slice_channels(tmp_path):
    b = Builder(10)
    c = b.conv("x", 4, 8, k=1)
    i64 = np.int64
    s = b.node("Slice", [c, b.init("st", np.array([2], i64)), b.init("en", np.array([7], i64)),
                         b.init("ax", np.array([1], i64))])
    b.conv(s, 5, 3, out="y1")
    b.conv(c, 8, 2, out="y2")
    b.zero_rows("conv3.weight", [2], axis=1), b.zero_rows("conv4.weight", [4], axis=1)
    m = b.model(tmp_path, [1, 4, 6, 6], ["y1", "y2"])
    prune_and_compare(m, L1.format(r=0.125))


def test_channel_pad_residual(tmp_path):
    """BlazeFace: Add(Pad(x, channels 4 -> 8), conv(x)); a padded channel is removable (the pad shrinks)."""
    b = Builder(11)
    a = b.node("Relu", [b.conv("x", 4, 4)])
    p = b.node("Pad", [a, b.init("pads", np.array([0, 0, 0, 0, 0, 4, 0, 0], dtype=np.int64))])
    c2 = b.conv(a, 4, 8)
    add = b.node("Add", [p, c2])
    b.conv(add, 8, 3, out="y")
    b.zero_rows(f"{c2}.weight", [6]), b.zero_rows(f"{c2}.bias", [6]), b.zero_rows("conv6.weight", [6], axis=1)
    m = b.model(tmp_path, [1, 4, 6, 6], ["y"])
    pruned, _ = prune_and_compare(m, L1.format(r=0.125))
    pad = next(n for n in pruned.graph.nodes if n.op == "Pad")
    assert list(pad.inputs[1].values) == [0, 0, 0, 0, 0, 3, 0, 0]


def test_elementwise_chain(tmp_path):
    """BN, SiLU (x * Sigmoid(x)), per-channel PRelu, broadcast constants, Clip, Resize, pooling, InstanceNorm, GAP."""
    b = Builder(12)
    rng = b.rng
    c = b.conv("x", 4, 8)
    bn = b.node("BatchNormalization", [c, b.init("g", rng.uniform(0.5, 1.5, 8).astype(np.float32)),
                                       b.init("be", rng.normal(0, .1, 8).astype(np.float32)),
                                       b.init("mu", rng.normal(0, .1, 8).astype(np.float32)),
                                       b.init("var", rng.uniform(.5, 2, 8).astype(np.float32))])
    silu = b.node("Mul", [bn, b.node("Sigmoid", [bn])])
    pr = b.node("PRelu", [silu, b.init("slope", rng.uniform(0, .3, (8, 1, 1)).astype(np.float32))])
    mul = b.node("Mul", [pr, b.init("cm", rng.uniform(.5, 2, (1, 8, 1, 1)).astype(np.float32))])
    add = b.node("Add", [mul, b.init("ca", rng.normal(0, 1, (8, 1, 1)).astype(np.float32))])
    cl = b.node("Clip", [add, b.init("lo", np.float32(-3)), b.init("hi", np.float32(6))])
    rs = b.node("Resize", [cl, "", b.init("sc", np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    mp = b.node("MaxPool", [rs], kernel_shape=[2, 2], strides=[2, 2])
    hs = b.node("HardSwish", [mp])
    lr = b.node("LeakyRelu", [hs], alpha=0.1)
    inn = b.node("InstanceNormalization", [lr, b.init("is", rng.uniform(.5, 1.5, 8).astype(np.float32)),
                                           b.init("ib", rng.normal(0, .1, 8).astype(np.float32))])
    b.conv(inn, 8, 3, out="y")
    gap = b.node("GlobalAveragePool", [lr])
    fl = b.node("Flatten", [gap], axis=1)
    b.gemm(fl, 8, 2, out="z")
    b.zero_rows(f"{c}.weight", [3]), b.zero_rows("conv14.weight", [3], axis=1), b.zero_rows("gemm17.weight", [3], 1)
    m = b.model(tmp_path, [1, 4, 6, 6], ["y", "z"])
    pruned, _ = prune_and_compare(m, L1.format(r=0.125), atol=2e-5)
    assert _conv_weight(pruned, c).shape[0] == 7


def test_graph_outputs_and_unhandled_ops_are_kept(tmp_path):
    b = Builder(13)
    c1 = b.conv("x", 4, 8)
    lrn = b.node("LRN", [c1], size=3)
    c2 = b.conv(lrn, 8, 8)
    b.conv(b.node("Relu", [c2]), 8, 6, out="y")
    m = b.model(tmp_path, [1, 4, 6, 6], ["y"])
    pruned, stats = prune_and_compare(m, L1.format(r=0.5), atol=1e3)
    assert stats["ops_without_handler"] == {"LRN": 1}
    assert _conv_weight(pruned, c1).shape[0] == 8  # blocked by the LRN
    assert _conv_weight(pruned, c2).shape[0] == 4
    assert _conv_weight(pruned, "conv5").shape[0] == 6  # feeds the graph output
    assert any("LRN" in r for r in stats["blocked_reasons"])


def test_exclude_and_round_to(tmp_path):
    b = Builder(14)
    c1 = b.conv("x", 4, 32, k=1)
    c2 = b.conv(b.node("Relu", [c1]), 32, 32, k=1)
    b.conv(b.node("Relu", [c2]), 32, 4, k=1, out="y")
    m = b.model(tmp_path, [1, 4, 6, 6], ["y"])
    pruned, _ = prune_and_compare(m, "prune{ratio=0.3,round_to=8,exclude=conv1}", atol=1e3)
    assert _conv_weight(pruned, c1).shape[0] == 32
    assert _conv_weight(pruned, c2).shape[0] == 24
    onnx.checker.check_model(pruned.to_onnx())
    assert helper  # keep import used
