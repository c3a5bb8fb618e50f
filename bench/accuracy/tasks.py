"""One task per benchmark model: how its samples are rendered and preprocessed, decoded and scored.

Calibration and evaluation samples come from two independent seed streams (disjoint by construction and
checked), class labels are assigned round-robin so both sets cover every class, and inputs are
preprocessed exactly as the shipping package does (BGR channel order, its mean/std, its resize rules).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import decode
import numpy as np
import render
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclass(frozen=True)
class Task:
    """How to make, decode and score samples for one model."""

    name: str
    kind: str  # classification | sequence | detection
    metric: str
    reference: str  # "labels": rendered ground truth; "float": the float model's own decoded outputs
    # (rng, index, per-stream state) -> (preprocessed input [C, H, W], label)
    sample: Callable[[np.random.Generator, int, dict], tuple[np.ndarray, Any]]
    predict: Callable[[list[np.ndarray]], Any]  # raw outputs of one sample -> prediction
    score: Callable[[list, list], float]  # (predictions, labels) -> metric in points (0-100)
    needs: Callable[[dict], None] | None = None  # hook to read model metadata (e.g. the charset)


# ----------------------------------------------------------------------------------------- preprocessing


def _bgr(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img[..., ::-1])


def paddle_text_input(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """PaddleOCR rec/cls resize: keep aspect ratio at height h (squeeze if wider than w), pad right with 0."""
    ih, iw = img.shape[:2]
    rw = min(w, int(np.ceil(h * iw / ih)))
    resized = np.asarray(Image.fromarray(img).resize((rw, h), Image.BILINEAR), np.float32)
    out = np.zeros((3, h, w), np.float32)
    out[:, :, :rw] = ((_bgr(resized) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
    return out


def imagenet_input(img: np.ndarray) -> np.ndarray:
    return ((_bgr(img).astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


# ----------------------------------------------------------------------------------------------- tasks


def _cls_sample(rng: np.random.Generator, index: int, state: dict) -> tuple[np.ndarray, int]:
    label = index % 2  # 0: upright, 1: rotated 180 degrees
    line = render.text_line(rng, render.random_text(rng, int(rng.integers(3, 14)), render.LINE_CHARS))
    if label:
        line = np.ascontiguousarray(line[::-1, ::-1])
    return paddle_text_input(line, 48, 192), label


def _orientation_sample(rng: np.random.Generator, index: int, state: dict) -> tuple[np.ndarray, int]:
    label = index % 4  # the package's labels "0", "90", "180", "270": the page turned clockwise
    page = np.rot90(render.text_page(rng, 224), k=-label)
    return imagenet_input(np.ascontiguousarray(page)), label


class _CharStream:
    """Characters from successive shuffled permutations of the alphabet, so every character appears."""

    def __init__(self, rng: np.random.Generator, chars: str):
        self.rng, self.chars, self.buf = rng, chars, []

    def take(self, n: int) -> str:
        while len(self.buf) < n:
            self.buf.extend(self.chars[i] for i in self.rng.permutation(len(self.chars)))
        out, self.buf = self.buf[:n], self.buf[n:]
        return "".join(out)


_REC_CHARS = render.WORD_CHARS + ".,:-"


def _rec_sample(rng: np.random.Generator, index: int, state: dict) -> tuple[np.ndarray, str]:
    stream = state.setdefault("chars", _CharStream(rng, _REC_CHARS))
    n = int(rng.integers(5, 13))
    chars = list(stream.take(n))
    for pos in sorted(rng.choice(np.arange(2, n - 1), size=min(2, n - 3), replace=False), reverse=True):
        if rng.random() < 0.5:
            chars.insert(int(pos), " ")
    text = "".join(chars)
    return paddle_text_input(render.text_line(rng, text), 48, 320), text


def _det_sample(rng: np.random.Generator, index: int, state: dict) -> tuple[np.ndarray, dict]:
    img, boxes = render.text_scene(rng, 480, 320)
    x = ((_bgr(img).astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
    return x, decode.detections(boxes, np.ones(len(boxes)), np.zeros(len(boxes)))


def _layout_sample(rng: np.random.Generator, index: int, state: dict) -> tuple[np.ndarray, None]:
    return imagenet_input(render.layout_page(rng, 608, 800)), None


def _glyph_sample(rng: np.random.Generator, index: int, state: dict) -> tuple[np.ndarray, dict]:
    img, boxes = render.glyph_scene(rng, 416)
    x = _bgr(img).astype(np.float32).transpose(2, 0, 1)  # ddddocr feeds raw 0-255 BGR
    return x, decode.detections(boxes, np.ones(len(boxes)), np.zeros(len(boxes)))


_photo: list[np.ndarray] = []


def _face_sample(rng: np.random.Generator, index: int, state: dict) -> tuple[np.ndarray, dict]:
    if not _photo:
        import fetch

        _photo.append(np.asarray(Image.open(fetch.fetch_asset("astronaut.png")).convert("RGB")))
    img, boxes = render.face_scene(rng, 640, _photo[0])
    x = _bgr(img).astype(np.float32).transpose(2, 0, 1)  # YuNet takes raw 0-255 BGR
    return x, decode.detections(boxes, np.ones(len(boxes)), np.zeros(len(boxes)))


_charset: list[str] = []


def _read_charset(meta: dict) -> None:
    _charset[:] = meta.get("character", "").split("\n") + [" "]


TASKS: dict[str, Task] = {
    "ppocr_cls": Task("ppocr_cls", "classification", "top-1 % (0/180)", "labels", _cls_sample,
                      lambda out: int(out[0][0].argmax()), decode.top1_accuracy),
    "doc_orientation": Task("doc_orientation", "classification", "top-1 % (4 rot.)", "labels",
                            _orientation_sample, lambda out: int(out[0][0].argmax()), decode.top1_accuracy),
    "ppocr_rec": Task("ppocr_rec", "sequence", "char acc %", "labels", _rec_sample,
                      lambda out: decode.ctc_greedy(out[0][0], _charset).strip(), decode.char_accuracy,
                      _read_charset),
    "ppocr_det": Task("ppocr_det", "detection", "F1@IoU.5 %", "labels", _det_sample,
                      lambda out: decode.db_boxes(out[0][0, 0]), decode.detection_f1),
    "layout_picodet": Task("layout_picodet", "detection", "F1@IoU.5 % vs float", "float", _layout_sample,
                           lambda out: decode.picodet_boxes(out, 800, 608), decode.detection_f1),
    "face_yunet": Task("face_yunet", "detection", "face F1@IoU.5 %", "labels", _face_sample,
                       lambda out: decode.yunet_boxes(out, 640, 640), decode.detection_f1),
    "yolox_chars": Task("yolox_chars", "detection", "F1@IoU.5 %", "labels", _glyph_sample,
                        lambda out: decode.yolox_boxes(out[0], 416), decode.detection_f1),
}


@dataclass
class Dataset:
    calib: np.ndarray  # [Nc, C, H, W]
    inputs: np.ndarray  # [Ne, C, H, W]
    labels: list  # None entries where the reference is the float model
    control: np.ndarray | None = None  # [Nk, C, H, W]: what --max-drop is judged on (never the evaluation set)
    control_labels: list | None = None


def _render(task: Task, seed: int, stream: int, n: int) -> tuple[np.ndarray, list]:
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream,)))
    state: dict = {}
    xs, ys = [], []
    for i in range(n):
        x, y = task.sample(rng, i, state)
        xs.append(x)
        ys.append(y)
    return np.stack(xs).astype(np.float32), ys


def build_dataset(task: Task, n_calib: int, n_eval: int, seed: int = 0, n_control: int = 0) -> Dataset:
    """Render calibration (seed stream 0), evaluation (stream 1) and accuracy-control (stream 2) samples; refuse any
    overlap between them."""
    calib, _ = _render(task, seed, 0, n_calib)
    inputs, labels = _render(task, seed, 1, n_eval)
    control, control_labels = _render(task, seed, 2, n_control) if n_control else (None, None)
    seen = {hashlib.sha1(x.tobytes()).hexdigest() for x in calib}
    if control is not None:
        seen |= {hashlib.sha1(x.tobytes()).hexdigest() for x in control}
    if any(hashlib.sha1(x.tobytes()).hexdigest() in seen for x in inputs):
        raise RuntimeError(f"{task.name}: evaluation samples overlap the calibration or control samples")
    return Dataset(calib, inputs, labels, control, control_labels)
