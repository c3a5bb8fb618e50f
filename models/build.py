"""Build the small reference models in models/ deterministically (onnx.helper + numpy, no downloads).

The models stand in for the families compress-graph targets (ResNet, MobileNetV2, YOLO, a pose net and
a BlazeFace-style face detector). Their weights are random but shaped like trained ones: He-init convs,
non-trivial BatchNorm statistics, a few outlier and near-zero output channels per conv, and depthwise
weights whose per-channel ranges differ by more than 100x, so that fold-bn, pruning, low-rank and
quantization meet the same difficulties as on real exports.

Usage: ``python models/build.py`` (write all), ``--check`` (compare with the files on disk, exit 1 on
a difference), ``--table`` (print the README table). Importable by path: ``MODELS[name]()`` returns an
``onnx.ModelProto``; the same call always gives byte-identical serialized bytes.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17; keeps the files loadable by older runtimes
MODELS_DIR = Path(__file__).resolve().parent


class GraphBuilder:
    """Collects nodes and initializers for one model; names every node and tensor, and refuses repeats."""

    def __init__(self, name: str, seed: int) -> None:
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._names: set[str] = set()
        self._shared: dict[str, str] = {}

    def _claim(self, name: str) -> str:
        if name in self._names:
            raise ValueError(f"duplicate name {name!r} in {self.name}")
        self._names.add(name)
        return name

    # -- tensors --------------------------------------------------------------------------------
    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), self._claim(name)))
        return name

    def shared_const(self, name: str, value: np.ndarray) -> str:
        """One initializer reused by several nodes (as exporters do for Clip bounds and Resize scales)."""
        if name not in self._shared:
            self._shared[name] = self.const(name, value)
        return self._shared[name]

    def node(self, op: str, inputs: list[str], name: str, n_out: int = 1, **attrs) -> str | list[str]:
        """Add one node; its output tensors are named after the node (``name`` or ``name.outI``)."""
        outputs = [name] if n_out == 1 else [f"{name}.out{i}" for i in range(n_out)]
        for out in outputs:
            if out != name:
                self._claim(out)
        self.nodes.append(helper.make_node(op, inputs, outputs, name=self._claim(name), **attrs))
        return outputs[0] if n_out == 1 else outputs

    # -- weights --------------------------------------------------------------------------------
    def channel_scales(self, cout: int) -> np.ndarray:
        """Per-output-channel multipliers: a few outliers (x3-6) and some near-zero channels (x1e-3)."""
        scales = np.ones(cout, dtype=np.float64)
        order = self.rng.permutation(cout)
        n_outlier = max(1, cout // 16)
        n_zero = max(1, cout // 12) if cout >= 8 else 0
        scales[order[:n_outlier]] = self.rng.uniform(3.0, 6.0, n_outlier)
        scales[order[n_outlier : n_outlier + n_zero]] = 1e-3
        return scales / np.sqrt(np.mean(scales**2))  # keep He's variance: activations stay bounded

    def depthwise_scales(self, c: int) -> np.ndarray:
        """Log-uniform per-channel ranges spanning > 100x, as in trained mobile nets (the CLE case)."""
        scales = 10.0 ** self.rng.uniform(-2.0, 0.3, c)
        order = self.rng.permutation(c)
        scales[order[0]] = 10.0**-2.3
        scales[order[1]] = 10.0**0.5
        return scales / np.sqrt(np.mean(scales**2))

    def he_weight(self, shape: tuple[int, ...], fan_in: int, scales: np.ndarray | None = None) -> np.ndarray:
        w = self.rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)
        if scales is not None:
            w *= scales.reshape((-1,) + (1,) * (len(shape) - 1))
        return w.astype(np.float32)

    def bias(self, c: int, std: float = 0.01, mean: float = 0.0) -> np.ndarray:
        return (mean + self.rng.normal(0.0, std, c)).astype(np.float32)

    # -- layers ---------------------------------------------------------------------------------
    def conv(self, x: str, cin: int, cout: int, k: int, name: str, stride: int = 1, group: int = 1,
             bias: bool = False, bias_mean: float = 0.0, depthwise_spread: bool = False,
             gain: float = 1.0) -> str:
        shape = (cout, cin // group, k, k)
        scales = gain * (self.depthwise_scales(cout) if depthwise_spread else self.channel_scales(cout))
        inputs = [x, self.const(f"{name}.weight", self.he_weight(shape, shape[1] * k * k, scales))]
        if bias:
            inputs.append(self.const(f"{name}.bias", self.bias(cout, mean=bias_mean)))
        p = k // 2
        return self.node("Conv", inputs, name, kernel_shape=[k, k], strides=[stride, stride],
                         pads=[p, p, p, p], group=group, dilations=[1, 1])

    def conv_transpose(self, x: str, cin: int, cout: int, name: str) -> str:
        """Stride-2, kernel-4, pad-1 deconvolution: doubles H and W (SimpleBaseline's upsampler)."""
        w = self.he_weight((cout, cin, 4, 4), cin * 4, self.channel_scales(cout)).transpose(1, 0, 2, 3)
        inputs = [x, self.const(f"{name}.weight", w)]
        return self.node("ConvTranspose", inputs, name, kernel_shape=[4, 4], strides=[2, 2],
                         pads=[1, 1, 1, 1])

    def bn(self, x: str, c: int, name: str) -> str:
        r = self.rng
        params = [
            r.uniform(0.5, 1.5, c),  # gamma
            r.normal(0.0, 0.1, c),  # beta
            r.normal(0.0, 0.2, c),  # running mean
            r.uniform(0.5, 2.0, c),  # running var
        ]
        names = [
            self.const(f"{name}.{field}", p.astype(np.float32))
            for field, p in zip(("scale", "bias", "mean", "var"), params, strict=True)
        ]
        return self.node("BatchNormalization", [x, *names], name, epsilon=1e-5, momentum=0.9)

    def act(self, x: str, kind: str | None, name: str, c: int = 0) -> str:
        if kind is None:
            return x
        if kind == "relu":
            return self.node("Relu", [x], f"{name}.relu")
        if kind == "relu6":
            lo = self.shared_const("const.clip_min", np.array(0.0, np.float32))
            hi = self.shared_const("const.clip_max", np.array(6.0, np.float32))
            return self.node("Clip", [x, lo, hi], f"{name}.relu6")
        if kind == "silu":
            sig = self.node("Sigmoid", [x], f"{name}.sigmoid")
            return self.node("Mul", [x, sig], f"{name}.silu")
        if kind == "leaky":
            return self.node("LeakyRelu", [x], f"{name}.leaky", alpha=0.1)
        if kind == "prelu":
            slope = self.rng.uniform(0.05, 0.3, (c, 1, 1)).astype(np.float32)
            return self.node("PRelu", [x, self.const(f"{name}.prelu.slope", slope)], f"{name}.prelu")
        raise ValueError(f"unknown activation {kind!r}")

    def conv_bn(self, x: str, cin: int, cout: int, k: int, name: str, stride: int = 1, group: int = 1,
                act: str | None = "relu", depthwise_spread: bool = False, gain: float = 1.0) -> str:
        y = self.conv(x, cin, cout, k, f"{name}.conv", stride, group, depthwise_spread=depthwise_spread,
                      gain=gain)
        y = self.bn(y, cout, f"{name}.bn")
        return self.act(y, act, name, cout)

    def resize2x(self, x: str, name: str) -> str:
        scales = self.shared_const("const.resize_scales", np.array([1, 1, 2, 2], np.float32))
        return self.node("Resize", [x, "", scales], name, mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor")

    def int64(self, name: str, values: list[int]) -> str:
        return self.const(name, np.array(values, dtype=np.int64))

    def classifier(self, x: str, c: int, num_classes: int) -> str:
        pooled = self.node("GlobalAveragePool", [x], "head.gap")
        flat = self.node("Flatten", [pooled], "head.flatten", axis=1)
        w = self.he_weight((num_classes, c), c) * 0.5
        inputs = [flat, self.const("head.fc.weight", w), self.const("head.fc.bias", self.bias(num_classes))]
        return self.node("Gemm", inputs, "logits", alpha=1.0, beta=1.0, transB=1)

    # -- model ----------------------------------------------------------------------------------
    def finish(self, inputs: dict[str, list[int]], outputs: dict[str, list[int]],
               doc: str) -> onnx.ModelProto:
        """Wrap up as an opset-17 model; declared output shapes are checked by full_check."""
        def info(name: str, shape: list[int]) -> onnx.ValueInfoProto:
            return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

        graph = helper.make_graph(
            self.nodes, self.name, [info(n, s) for n, s in inputs.items()],
            [info(n, s) for n, s in outputs.items()], initializer=self.initializers, doc_string=doc,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="compress-graph-models",
            producer_version="1", ir_version=IR_VERSION, doc_string=doc,
        )
        onnx.checker.check_model(model, full_check=True)
        return model


# ---------------------------------------------------------------------------------------------
# 1. ResNet-style classifier
# ---------------------------------------------------------------------------------------------
def basic_block(b: GraphBuilder, x: str, cin: int, cout: int, stride: int, name: str) -> str:
    y = b.conv_bn(x, cin, cout, 3, f"{name}.conv1", stride, act="relu")
    y = b.conv_bn(y, cout, cout, 3, f"{name}.conv2", act=None)
    if stride != 1 or cin != cout:
        x = b.conv_bn(x, cin, cout, 1, f"{name}.downsample", stride, act=None)
    y = b.node("Add", [y, x], f"{name}.add")
    return b.act(y, "relu", name)


def build_resnet_s() -> onnx.ModelProto:
    b = GraphBuilder("resnet_s", seed=101)
    x = b.conv_bn("input", 3, 16, 3, "stem", stride=2)
    x = b.node("MaxPool", [x], "stem.maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 16
    for s, (cout, blocks, stride) in enumerate([(16, 2, 1), (32, 2, 2), (64, 1, 2)], start=1):
        for i in range(blocks):
            x = basic_block(b, x, cin, cout, stride if i == 0 else 1, f"stage{s}.block{i}")
            cin = cout
    logits = b.classifier(x, cin, 10)
    return b.finish({"input": [1, 3, 64, 64]}, {logits: [1, 10]},
                    "ResNet-style classifier: 3 stages of basic blocks, 1x1 stride-2 projections, 10 classes")


# ---------------------------------------------------------------------------------------------
# 2. MobileNetV2-style classifier
# ---------------------------------------------------------------------------------------------
def inverted_residual(b: GraphBuilder, x: str, cin: int, cout: int, stride: int, expand: int,
                      name: str) -> str:
    hidden = cin * expand
    y = x
    if expand != 1:
        y = b.conv_bn(y, cin, hidden, 1, f"{name}.expand", act="relu6")
    y = b.conv_bn(y, hidden, hidden, 3, f"{name}.dw", stride, group=hidden, act="relu6",
                  depthwise_spread=True)
    y = b.conv_bn(y, hidden, cout, 1, f"{name}.project", act=None)
    if stride == 1 and cin == cout:
        y = b.node("Add", [y, x], f"{name}.add")
    return y


def build_mobilenetv2_s() -> onnx.ModelProto:
    b = GraphBuilder("mobilenetv2_s", seed=202)
    x = b.conv_bn("input", 3, 16, 3, "stem", stride=2, act="relu6")
    cin = 16
    # (expand ratio, out channels, repeats, first stride) as in the MobileNetV2 paper, narrowed
    settings = [(1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2), (4, 48, 2, 2)]
    for s, (t, c, n, stride) in enumerate(settings, start=1):
        for i in range(n):
            x = inverted_residual(b, x, cin, c, stride if i == 0 else 1, t, f"stage{s}.block{i}")
            cin = c
    x = b.conv_bn(x, cin, 128, 1, "last", act="relu6")
    logits = b.classifier(x, 128, 10)
    return b.finish({"input": [1, 3, 64, 64]}, {logits: [1, 10]},
                    "MobileNetV2-style classifier: inverted residuals, ReLU6 as Clip, depthwise spread >100x")


# ---------------------------------------------------------------------------------------------
# 3. YOLO-style detector (Ultralytics-like output0 [1, 4 + nc, N])
# ---------------------------------------------------------------------------------------------
def c2f(b: GraphBuilder, x: str, cin: int, cout: int, n: int, shortcut: bool, name: str) -> str:
    """CSP block: 1x1 conv, Split into halves, n bottlenecks on the second half, Concat all, 1x1 conv."""
    h = cout // 2
    y = b.conv_bn(x, cin, 2 * h, 1, f"{name}.cv1", act="silu")
    parts = b.node("Split", [y, b.int64(f"{name}.split.sizes", [h, h])], f"{name}.split", n_out=2, axis=1)
    parts = list(parts)
    for i in range(n):
        z = b.conv_bn(parts[-1], h, h, 3, f"{name}.m{i}.cv1", act="silu")
        z = b.conv_bn(z, h, h, 3, f"{name}.m{i}.cv2", act="silu")
        if shortcut:
            z = b.node("Add", [parts[-1], z], f"{name}.m{i}.add")
        parts.append(z)
    cat = b.node("Concat", parts, f"{name}.concat", axis=1)
    return b.conv_bn(cat, (2 + n) * h, cout, 1, f"{name}.cv2", act="silu")


def sppf(b: GraphBuilder, x: str, c: int, name: str) -> str:
    h = c // 2
    y = b.conv_bn(x, c, h, 1, f"{name}.cv1", act="silu")
    pools = [y]
    for i in range(3):
        pools.append(b.node("MaxPool", [pools[-1]], f"{name}.pool{i}", kernel_shape=[5, 5],
                            strides=[1, 1], pads=[2, 2, 2, 2]))
    cat = b.node("Concat", pools, f"{name}.concat", axis=1)
    return b.conv_bn(cat, 4 * h, c, 1, f"{name}.cv2", act="silu")


def yolo_anchors(sizes: list[tuple[int, int]], strides: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Anchor centres in grid units [1, 2, N] and per-anchor strides [1, 1, N], level by level."""
    points, stride_row = [], []
    for (h, w), s in zip(sizes, strides, strict=True):
        gy, gx = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
        points.append(np.stack([gx.ravel(), gy.ravel()]))
        stride_row.append(np.full(h * w, s))
    return (np.concatenate(points, 1)[None].astype(np.float32),
            np.concatenate(stride_row)[None, None].astype(np.float32))


def build_yolo_s(num_classes: int = 10) -> onnx.ModelProto:
    b = GraphBuilder("yolo_s", seed=303)
    x = b.conv_bn("images", 3, 8, 3, "model.0", stride=2, act="silu")  # 64x64
    x = b.conv_bn(x, 8, 16, 3, "model.1", stride=2, act="silu")  # 32x32
    x = c2f(b, x, 16, 16, 1, True, "model.2")
    x = b.conv_bn(x, 16, 32, 3, "model.3", stride=2, act="silu")  # 16x16, stride 8
    p3 = c2f(b, x, 32, 32, 1, True, "model.4")
    x = b.conv_bn(p3, 32, 48, 3, "model.5", stride=2, act="silu")  # 8x8, stride 16
    p4 = c2f(b, x, 48, 48, 1, True, "model.6")
    x = b.conv_bn(p4, 48, 64, 3, "model.7", stride=2, act="silu")  # 4x4, stride 32
    x = c2f(b, x, 64, 64, 1, True, "model.8")
    p5 = sppf(b, x, 64, "model.9")
    # FPN (top-down): upsample, concat with the lateral feature, fuse
    up = b.resize2x(p5, "model.10.upsample")
    n4 = c2f(b, b.node("Concat", [up, p4], "model.11.concat", axis=1), 112, 48, 1, False, "model.12")
    up = b.resize2x(n4, "model.13.upsample")
    n3 = c2f(b, b.node("Concat", [up, p3], "model.14.concat", axis=1), 80, 32, 1, False, "model.15")

    levels = [(n3, 32, 16, 8), (n4, 48, 8, 16), (p5, 64, 4, 32)]
    boxes, scores = [], []
    for i, (feat, c, size, _) in enumerate(levels):
        name = f"head.{i}"
        box = b.conv_bn(feat, c, 32, 3, f"{name}.box.0", act="silu")
        box = b.conv(box, 32, 4, 1, f"{name}.box.1", bias=True, gain=0.3)
        cls = b.conv_bn(feat, c, 32, 3, f"{name}.cls.0", act="silu")
        cls = b.conv(cls, 32, num_classes, 1, f"{name}.cls.1", bias=True, bias_mean=-3.0, gain=0.3)
        boxes.append(b.node("Reshape", [box, b.int64(f"{name}.box.shape", [1, 4, size * size])],
                            f"{name}.box.reshape"))
        scores.append(b.node("Reshape", [cls, b.int64(f"{name}.cls.shape", [1, num_classes, size * size])],
                             f"{name}.cls.reshape"))
    n = sum(size * size for _, _, size, _ in levels)
    raw_box = b.node("Concat", boxes, "decode.box.concat", axis=2)
    raw_cls = b.node("Concat", scores, "decode.cls.concat", axis=2)
    # dist2bbox as Ultralytics exports it: distances lt/rb around anchor points, then xywh * stride
    anchors, strides = yolo_anchors([(s, s) for _, _, s, _ in levels], [st for *_, st in levels])
    dist = b.node("Sigmoid", [raw_box], "decode.box.sigmoid")
    dist = b.node("Mul", [dist, b.const("decode.max_dist", np.array(8.0, np.float32))], "decode.dist")
    lt, rb = b.node("Split", [dist, b.int64("decode.split.sizes", [2, 2])], "decode.split", n_out=2, axis=1)
    anchor_t = b.const("decode.anchors", anchors)
    x1y1 = b.node("Sub", [anchor_t, lt], "decode.x1y1")
    x2y2 = b.node("Add", [anchor_t, rb], "decode.x2y2")
    csum = b.node("Add", [x1y1, x2y2], "decode.center_sum")
    cxy = b.node("Div", [csum, b.const("decode.two", np.array(2.0, np.float32))], "decode.cxy")
    wh = b.node("Sub", [x2y2, x1y1], "decode.wh")
    xywh = b.node("Concat", [cxy, wh], "decode.xywh", axis=1)
    pix = b.node("Mul", [xywh, b.const("decode.strides", strides)], "decode.box_pixels")
    prob = b.node("Sigmoid", [raw_cls], "decode.cls.sigmoid")
    b.node("Concat", [pix, prob], "output0", axis=1)
    return b.finish({"images": [1, 3, 128, 128]}, {"output0": [1, 4 + num_classes, n]},
                    "YOLO-style detector: C2f/SPPF backbone, FPN with Resize, 3 heads, output0 [1, 4+nc, N]")


# ---------------------------------------------------------------------------------------------
# 4. Pose net (SimpleBaseline-like: encoder to stride 8, ConvTranspose decoder, 17 heatmaps)
# ---------------------------------------------------------------------------------------------
def build_pose_s(num_keypoints: int = 17) -> onnx.ModelProto:
    b = GraphBuilder("pose_s", seed=404)
    x = b.conv_bn("input", 3, 16, 3, "encoder.stem", stride=2)  # 64x48
    s4 = b.conv_bn(x, 16, 32, 3, "encoder.down1", stride=2)  # 32x24, stride 4
    s4 = basic_block(b, s4, 32, 32, 1, "encoder.block1")
    x = b.conv_bn(s4, 32, 64, 3, "encoder.down2", stride=2)  # 16x12, stride 8
    x = basic_block(b, x, 64, 64, 1, "encoder.block2")
    x = b.conv_transpose(x, 64, 32, "decoder.deconv")  # 32x24
    x = b.act(b.bn(x, 32, "decoder.deconv.bn"), "relu", "decoder.deconv")
    skip = b.conv_bn(s4, 32, 32, 1, "decoder.skip", act=None)
    x = b.node("Add", [x, skip], "decoder.fuse")
    x = b.conv_bn(x, 32, 32, 3, "decoder.refine")
    b.conv(x, 32, num_keypoints, 1, "heatmaps", bias=True, gain=0.1)
    return b.finish({"input": [1, 3, 128, 96]}, {"heatmaps": [1, num_keypoints, 32, 24]},
                    "Pose net: stride-8 conv encoder, ConvTranspose+BN decoder with skip, 17 heatmaps")


# ---------------------------------------------------------------------------------------------
# 5. Face detector (BlazeFace-like: 896 anchors at strides 8 and 16)
# ---------------------------------------------------------------------------------------------
def blaze_block(b: GraphBuilder, x: str, cin: int, cout: int, stride: int, name: str) -> str:
    """Depthwise-separable residual block; stride 2 uses MaxPool + channel Pad on the shortcut (BlazeFace)."""
    y = b.conv_bn(x, cin, cin, 3, f"{name}.dw", stride, group=cin, act=None, depthwise_spread=True)
    y = b.conv_bn(y, cin, cout, 1, f"{name}.pw", act=None, gain=math.sqrt(0.5))  # linear input
    if stride == 2:
        x = b.node("MaxPool", [x], f"{name}.shortcut.pool", kernel_shape=[2, 2], strides=[2, 2])
    if cout != cin:
        pads = b.int64(f"{name}.shortcut.pads", [0, 0, 0, 0, 0, cout - cin, 0, 0])
        x = b.node("Pad", [x, pads], f"{name}.shortcut.pad", mode="constant")
    y = b.node("Add", [y, x], f"{name}.add")
    return b.act(y, "prelu", name, cout)


def build_face_s() -> onnx.ModelProto:
    b = GraphBuilder("face_s", seed=505)
    x = b.conv_bn("input", 3, 16, 3, "backbone.stem", stride=2, act="leaky")  # 64x64
    plan = [(16, 1), (24, 2), (24, 1), (32, 2), (32, 1), (48, 2), (48, 1)]
    cin, feats = 16, {}
    for i, (cout, stride) in enumerate(plan):
        x = blaze_block(b, x, cin, cout, stride, f"backbone.block{i}")
        cin = cout
        if i == 4:
            feats[8] = (x, cout)  # 16x16
    feats[16] = (x, cin)  # 8x8
    boxes, scores = [], []
    for stride, n_anchor in ((8, 2), (16, 6)):
        feat, c = feats[stride]
        for kind, width, out in (("box", 4, boxes), ("score", 1, scores)):
            name = f"head.s{stride}.{kind}"
            y = b.conv(feat, c, n_anchor * width, 1, name, bias=True, gain=0.1,
                       bias_mean=-2.0 if kind == "score" else 0.0)
            y = b.node("Transpose", [y], f"{name}.nhwc", perm=[0, 2, 3, 1])
            out.append(b.node("Reshape", [y, b.int64(f"{name}.shape", [1, -1, width])], f"{name}.reshape"))
    b.node("Concat", boxes, "boxes", axis=1)
    logits = b.node("Concat", scores, "scores.logits", axis=1)
    b.node("Sigmoid", [logits], "scores")
    a = 16 * 16 * 2 + 8 * 8 * 6
    return b.finish({"input": [1, 3, 128, 128]}, {"boxes": [1, a, 4], "scores": [1, a, 1]},
                    "BlazeFace-like face detector: depthwise-separable residual blocks, PReLU, 2 head scales")


MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "resnet_s": build_resnet_s,
    "mobilenetv2_s": build_mobilenetv2_s,
    "yolo_s": build_yolo_s,
    "pose_s": build_pose_s,
    "face_s": build_face_s,
}


def serialize(model: onnx.ModelProto) -> bytes:
    """The exact bytes written to models/<name>.onnx."""
    return model.SerializeToString(deterministic=True)


def count_macs(model: onnx.ModelProto) -> tuple[int, int]:
    """(parameters, multiply-accumulates) of Conv, ConvTranspose and Gemm, from inferred shapes."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]}
    weights = {t.name: t.dims for t in model.graph.initializer}
    params = sum(int(np.prod(d)) for d in weights.values())
    macs = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            w = weights[node.input[1]]
            macs += int(np.prod(shapes[node.output[0]])) * int(np.prod(w[1:]))
        elif node.op_type == "ConvTranspose":
            w = weights[node.input[1]]
            macs += int(np.prod(shapes[node.input[0]])) * int(np.prod(w[1:]))
        elif node.op_type == "Gemm":
            macs += int(np.prod(weights[node.input[1]]))
    return params, macs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=MODELS_DIR)
    parser.add_argument("--check", action="store_true", help="compare with the files on disk, write nothing")
    parser.add_argument("--table", action="store_true", help="print params / MACs per model")
    args = parser.parse_args(argv)
    stale = []
    for name, build in MODELS.items():
        model = build()
        data = serialize(model)
        path = args.out_dir / f"{name}.onnx"
        if args.check:
            if not path.exists() or path.read_bytes() != data:
                stale.append(name)
        else:
            path.write_bytes(data)
        if args.table:
            params, macs = count_macs(model)
            print(f"| {name} | {params / 1e3:.1f} K | {macs / 1e6:.2f} M | {len(data) / 1024:.0f} KiB |")
    if stale:
        print("out of date: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
