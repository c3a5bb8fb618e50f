import os

import numpy as np
import onnx
import pytest
from cg_testutil import BUNDLED, LIGHT_DIR, MODELS, assert_close, make_model, rand, save_tmp
from compress_graph import load, save
from compress_graph.ir.errors import ModelError
from compress_graph.ir.io import MIN_OPSET
from onnx import helper, numpy_helper


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_roundtrip_is_exact(name, tmp_path):
    m = load(MODELS / f"{name}.onnx")
    save(m, tmp_path / "out.onnx")
    assert_close(onnx.load(MODELS / f"{name}.onnx"), onnx.load(tmp_path / "out.onnx"), rtol=0, atol=0)


@pytest.mark.parametrize("path", sorted(LIGHT_DIR.glob("*.onnx")), ids=lambda p: p.stem)
def test_light_opset9_models_load_and_upgrade(path):
    m = load(path)
    assert m.opset >= MIN_OPSET
    # weights listed as graph inputs in the original become plain initializers
    assert all(not hasattr(t, "values") for t in m.graph.inputs)
    onnx.checker.check_model(m.to_onnx())


def test_save_is_deterministic_and_atomic(tmp_path):
    m = load(MODELS / "resnet_s.onnx")
    save(m, tmp_path / "a.onnx")
    save(load(MODELS / "resnet_s.onnx"), tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["a.onnx", "b.onnx"]  # no temp files left behind


def test_save_failure_keeps_previous_file(tmp_path, monkeypatch):
    m = load(MODELS / "resnet_s.onnx")
    target = tmp_path / "m.onnx"
    save(m, target)
    before = target.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        save(m, target)
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]


def _external_model(tmp_path, location: str, length: int | None = None):
    w = rand((4, 4))
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [("x", [1, 4])], [("y", [1, 4])], {"w": w})
    t = model.graph.initializer[0]
    (tmp_path / "w.bin").write_bytes(w.tobytes())
    onnx.external_data_helper.set_external_data(t, location, offset=0, length=length or w.nbytes)
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    p = tmp_path / "m.onnx"
    p.write_bytes(model.SerializeToString())
    return p, w


def test_external_data_inside_folder_loads(tmp_path):
    p, w = _external_model(tmp_path, "w.bin")
    m = load(p)
    const = [t for t in m.graph.tensors().values() if t.name == "w"][0]
    np.testing.assert_array_equal(const.values, w)


@pytest.mark.parametrize("location,needle", [
    ("../w.bin", "outside the model folder"),
    ("/etc/passwd", "must be relative"),
    ("missing.bin", "missing"),
])
def test_external_data_escape_or_missing_is_refused(tmp_path, location, needle):
    p, _ = _external_model(tmp_path, location)
    with pytest.raises(ModelError, match=needle):
        load(p)


def test_external_data_symlink_escape_is_refused(tmp_path):
    outside = tmp_path / "outside"
    inside = tmp_path / "inside"
    outside.mkdir()
    inside.mkdir()
    p, w = _external_model(inside, "w.bin")
    (outside / "w.bin").write_bytes(w.tobytes())
    (inside / "w.bin").unlink()
    (inside / "w.bin").symlink_to(outside / "w.bin")
    with pytest.raises(ModelError, match="outside the model folder"):
        load(p)


def test_external_data_too_short_is_refused(tmp_path):
    p, w = _external_model(tmp_path, "w.bin", length=10_000)
    with pytest.raises(ModelError, match="shorter than offset"):
        load(p)


def test_large_weights_go_to_external_data(tmp_path, monkeypatch):
    from compress_graph.ir import io

    monkeypatch.setattr(io, "EXTERNAL_DATA_THRESHOLD", 1000)
    m = load(MODELS / "face_s.onnx")
    save(m, tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx.data").is_file()
    assert (tmp_path / "m.onnx").stat().st_size < (tmp_path / "m.onnx.data").stat().st_size
    back = load(tmp_path / "m.onnx")
    assert_close(onnx.load(MODELS / "face_s.onnx"), back, rtol=0, atol=0)


@pytest.mark.parametrize("data,needle", [
    (b"", "empty file"),
    (b"\x08\x07garbage\xff\xff\xff", "not an ONNX model"),
])
def test_bad_files(tmp_path, data, needle):
    p = tmp_path / "bad.onnx"
    p.write_bytes(data)
    with pytest.raises(ModelError, match=needle):
        load(p)


def test_truncated_model(tmp_path):
    data = (MODELS / "resnet_s.onnx").read_bytes()
    p = tmp_path / "t.onnx"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError):
        load(p)


def test_invalid_graph_is_one_line_error(tmp_path):
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", [1, 4])], [("y", [1, 4])])
    model.graph.node[0].input[0] = "nope"
    p = save_tmp(model, tmp_path)
    with pytest.raises(ModelError) as err:
        load(p)
    assert "\n" not in str(err.value)


def test_future_opset_refused(tmp_path):
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", [1, 4])], [("y", [1, 4])])
    model.opset_import[0].version = 999
    with pytest.raises(ModelError, match="newer"):
        load(save_tmp(model, tmp_path))


def test_weights_from_constant_of_shape_fold(tmp_path):
    """Old exports make weights with ConstantOfShape; the model still loads and runs."""
    cos = helper.make_node("ConstantOfShape", ["s"], ["w"], value=numpy_helper.from_array(np.array([0.5], np.float32)))
    model = make_model([cos, helper.make_node("MatMul", ["x", "w"], ["y"])], [("x", [1, 4])], [("y", [1, 4])],
                       {"s": np.array([4, 4], dtype=np.int64)})
    m = load(save_tmp(model, tmp_path))
    assert_close(model, m)
