import numpy as np
from cg_testutil import make_model, rand
from compress_graph.ir.cost import model_cost
from onnx import helper


def _conv(cin, cout, k, hw, stride=1, group=1, dilation=1, pad=None):
    pad = (k // 2) * dilation if pad is None else pad
    w = rand((cout, cin // group, k, k))
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[k, k], strides=[stride, stride],
                            pads=[pad] * 4, group=group, dilations=[dilation, dilation])
    ho = (hw + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    return make_model([node], [("x", [1, cin, hw, hw])], [("y", [1, cout, ho, ho])],
                      {"w": w, "b": np.zeros(cout, np.float32)}), ho


def test_resnet_3x3_conv():
    m, ho = _conv(64, 64, 3, 56)
    c = model_cost(m)
    assert ho == 56
    assert c.macs == 64 * 56 * 56 * 64 * 9  # 115,605,504 as in the ResNet-18 layer tables
    assert c.params == 64 * 64 * 9 + 64
    assert c.bytes == 4 * c.params


def test_strided_stem_conv():
    m, ho = _conv(3, 64, 7, 224, stride=2, pad=3)
    assert ho == 112
    assert model_cost(m).macs == 112 * 112 * 64 * 3 * 49  # 118,013,952


def test_depthwise_conv():
    m, ho = _conv(32, 32, 3, 112, group=32)
    assert model_cost(m).macs == 32 * 112 * 112 * 9


def test_grouped_dilated_conv():
    m, ho = _conv(16, 32, 3, 20, group=4, dilation=2)
    assert ho == 20
    assert model_cost(m).macs == 32 * 20 * 20 * (16 // 4) * 9


def test_conv_transpose():
    w = rand((8, 4, 4, 4))  # [Cin, Cout/group, k, k]
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], kernel_shape=[4, 4], strides=[2, 2], pads=[1] * 4)
    m = make_model([node], [("x", [1, 8, 10, 10])], [("y", [1, 4, 20, 20])], {"w": w})
    assert model_cost(m).macs == 8 * 10 * 10 * 4 * 16


def test_gemm_and_matmul():
    g = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)
    m = make_model([g], [("x", [2, 512])], [("y", [2, 1000])], {"w": rand((1000, 512)), "b": rand((1000,))})
    c = model_cost(m)
    assert c.macs == 2 * 512 * 1000
    assert c.params == 512 * 1000 + 1000
    mm = helper.make_node("MatMul", ["x", "w"], ["y"])
    m = make_model([mm], [("x", [3, 5, 16])], [("y", [3, 5, 8])], {"w": rand((16, 8))})
    assert model_cost(m).macs == 3 * 5 * 8 * 16


def test_pooling_and_elementwise():
    nodes = [helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Relu", ["p"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["y"])]
    m = make_model(nodes, [("x", [1, 8, 16, 16])], [("y", [1, 8, 1, 1])])
    c = model_cost(m)
    assert c.macs == 8 * 8 * 8 * 4 + 8 * 8 * 8 + 8 * 8 * 8
    per = {n.op: n.macs for n in c.per_node}
    assert per == {"MaxPool": 2048, "Relu": 512, "GlobalAveragePool": 512}
