"""The bundled reference models: valid, runnable, reproducible, and built the way their names claim."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"

EXPECTED_IO = {
    "resnet_s": ({"input": [1, 3, 64, 64]}, {"logits": [1, 10]}),
    "mobilenetv2_s": ({"input": [1, 3, 64, 64]}, {"logits": [1, 10]}),
    "yolo_s": ({"images": [1, 3, 128, 128]}, {"output0": [1, 14, 336]}),
    "pose_s": ({"input": [1, 3, 128, 96]}, {"heatmaps": [1, 17, 32, 24]}),
    "face_s": ({"input": [1, 3, 128, 128]}, {"boxes": [1, 896, 4], "scores": [1, 896, 1]}),
}
NAMES = list(EXPECTED_IO)


def _load_build_module():
    spec = importlib.util.spec_from_file_location("compress_graph_models_build", MODELS_DIR / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def build():
    return _load_build_module()


@pytest.fixture(scope="module")
def committed() -> dict[str, onnx.ModelProto]:
    return {name: onnx.load(str(MODELS_DIR / f"{name}.onnx")) for name in NAMES}


def _ops(model: onnx.ModelProto) -> Counter:
    return Counter(node.op_type for node in model.graph.node)


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _dims(value: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value for d in value.type.tensor_type.shape.dim]


def test_build_registry_lists_every_model(build):
    assert list(build.MODELS) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_rebuild_is_byte_identical_to_committed_file(build, name):
    first = build.serialize(build.MODELS[name]())
    assert first == build.serialize(build.MODELS[name]())
    assert first == (MODELS_DIR / f"{name}.onnx").read_bytes(), "run `python models/build.py`"


@pytest.mark.parametrize("name", NAMES)
def test_model_is_valid_opset17_float32_batch1(committed, name):
    model = committed[name]
    onnx.checker.check_model(model, full_check=True)
    assert (MODELS_DIR / f"{name}.onnx").stat().st_size < 2 * 1024 * 1024
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    inputs, outputs = EXPECTED_IO[name]
    assert {i.name: _dims(i) for i in model.graph.input} == inputs
    assert {o.name: _dims(o) for o in model.graph.output} == outputs
    for value in [*model.graph.input, *model.graph.output]:
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


@pytest.mark.parametrize("name", NAMES)
def test_names_are_unique_and_meaningful(committed, name):
    graph = committed[name].graph
    node_names = [n.name for n in graph.node]
    assert all(node_names) and len(set(node_names)) == len(node_names)
    tensors = [i.name for i in graph.input] + [t.name for t in graph.initializer]
    tensors += [out for n in graph.node for out in n.output]
    assert len(set(tensors)) == len(tensors)
    assert all("." in n for n in node_names if n not in {"logits", "output0", "heatmaps", "boxes", "scores"})


@pytest.mark.parametrize("name", NAMES)
def test_runs_in_onnxruntime_with_finite_outputs(committed, name):
    session = ort.InferenceSession(committed[name].SerializeToString(), providers=["CPUExecutionProvider"])
    inputs, outputs = EXPECTED_IO[name]
    (input_name, shape), = inputs.items()
    feed = {input_name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    results = session.run(list(outputs), feed)
    for (out_name, out_shape), value in zip(outputs.items(), results, strict=True):
        assert list(value.shape) == out_shape, out_name
        assert np.isfinite(value).all(), out_name
        assert value.std() > 1e-3, f"{out_name} is degenerate"


@pytest.mark.parametrize("name", NAMES)
def test_weights_look_trained(committed, name):
    """Non-trivial BN statistics, plus outlier and near-zero output channels in the convs."""
    model, weights = committed[name], _weights(committed[name])
    bns = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    assert bns
    for bn in bns:
        gamma, beta, mean, var = (weights[i] for i in bn.input[1:])
        assert 0.5 <= gamma.min() and gamma.max() <= 1.5 and 0.5 <= var.min() and var.max() <= 2.0
        assert np.abs(mean).max() > 0 and np.abs(beta).max() > 0
    ranges = [np.abs(weights[n.input[1]]).reshape(weights[n.input[1]].shape[0], -1).max(axis=1)
              for n in model.graph.node if n.op_type == "Conv"]
    assert any(r.min() < 1e-2 * np.median(r) for r in ranges), "no near-zero channels"
    assert any(r.max() > 3 * np.median(r) for r in ranges), "no outlier channels"


def _depthwise_convs(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    weights = _weights(model)
    found = []
    for node in model.graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type == "Conv" and group > 1 and weights[node.input[1]].shape[1] == 1:
            assert weights[node.input[1]].shape[0] == group
            found.append(node)
    return found


def test_resnet_has_residual_blocks_and_projection(committed):
    model = committed["resnet_s"]
    ops, weights = _ops(model), _weights(model)
    assert ops["Add"] >= 4 and ops["GlobalAveragePool"] == 1 and ops["Gemm"] == 1 and ops["MaxPool"] == 1
    projections = [n for n in model.graph.node if n.name.endswith("downsample.conv")]
    assert projections and all(weights[n.input[1]].shape[2:] == (1, 1) for n in projections)


def test_mobilenet_has_depthwise_convs_with_wide_channel_spread(committed):
    model = committed["mobilenetv2_s"]
    ops, weights = _ops(model), _weights(model)
    assert ops["Clip"] > 0 and ops["Add"] > 0
    depthwise = _depthwise_convs(model)
    assert len(depthwise) >= 5
    for node in depthwise:
        ranges = np.abs(weights[node.input[1]]).reshape(weights[node.input[1]].shape[0], -1).max(axis=1)
        assert ranges.max() / ranges.min() > 100, node.name


def test_yolo_has_csp_sppf_fpn_and_ultralytics_output(committed):
    model = committed["yolo_s"]
    ops = _ops(model)
    assert ops["Split"] >= 5 and ops["Concat"] >= 5 and ops["Resize"] == 2 and ops["MaxPool"] == 3
    assert ops["Sigmoid"] >= ops["Conv"] - 6  # SiLU = x * Sigmoid(x) after every conv but the 6 head outputs
    producer = {out: n for n in model.graph.node for out in n.output}
    assert producer["output0"].op_type == "Concat"
    assert [producer[i].op_type for i in producer["output0"].input] == ["Mul", "Sigmoid"]


def test_pose_has_transposed_conv_decoder_with_bn(committed):
    model = committed["pose_s"]
    consumers = {i: n for n in model.graph.node for i in n.input}
    deconvs = [n for n in model.graph.node if n.op_type == "ConvTranspose"]
    assert deconvs and all(consumers[n.output[0]].op_type == "BatchNormalization" for n in deconvs)


def test_face_has_separable_residual_blocks_and_two_scale_heads(committed):
    model = committed["face_s"]
    ops = _ops(model)
    assert len(_depthwise_convs(model)) >= 5 and ops["Add"] >= 5
    assert ops["PRelu"] > 0 and ops["Transpose"] == 4 and ops["Pad"] > 0


def test_build_script_check_mode(tmp_path):
    """`python models/build.py --out-dir D` writes files that `--check` then accepts."""
    script = str(MODELS_DIR / "build.py")
    assert subprocess.run([sys.executable, script, "--check", "--out-dir", str(tmp_path)]).returncode == 1
    subprocess.run([sys.executable, script, "--out-dir", str(tmp_path)], check=True)
    assert subprocess.run([sys.executable, script, "--check", "--out-dir", str(tmp_path)]).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.onnx" for n in NAMES)


def test_readme_table_matches_the_built_models(build):
    """The params / MACs in models/README.md are the ones `build.py --table` computes."""
    readme = (MODELS_DIR / "README.md").read_text()
    for name in NAMES:
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{name}.onnx`"))
        params, macs = build.count_macs(build.MODELS[name]())
        assert f"| {params / 1e3:.1f} K | {macs / 1e6:.2f} M |" in row, name
