"""Deterministic synthetic images with known labels: text lines, text pages, document layouts, glyph scenes.

Real models need real-looking inputs to show real failures (skewed activations, scores near thresholds),
but the benchmark must run offline and reproduce bit for bit, so every image is rendered with PIL from a
seeded numpy Generator and a font found on the machine (DejaVu from Debian's fonts-dejavu-core when
installed, else PIL's built-in scalable font).
"""

from __future__ import annotations

import functools
import string
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/truetype", "/usr/share/fonts")
FONT_NAMES = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf",
              "DejaVuSerif-Bold.ttf", "DejaVuSansCondensed.ttf")
WORD_CHARS = string.ascii_letters + string.digits
LINE_CHARS = WORD_CHARS + ".,:-"


@functools.cache
def font_paths() -> tuple[str, ...]:
    """The fonts used for rendering, in a fixed order; empty means PIL's built-in font."""
    found = []
    for name in FONT_NAMES:
        for folder in FONT_DIRS:
            hits = sorted(Path(folder).rglob(name)) if Path(folder).is_dir() else []
            if hits:
                found.append(str(hits[0]))
                break
    return tuple(found)


@functools.cache
def get_font(index: int, size: int) -> ImageFont.FreeTypeFont:
    paths = font_paths()
    if not paths:
        return ImageFont.load_default(size)
    return ImageFont.truetype(paths[index % len(paths)], size)


def pick_font(rng: np.random.Generator, lo: int, hi: int, bold: bool | None = None):
    count = max(len(font_paths()), 1)
    choices = [i for i in range(count) if bold is None or (("Bold" in font_paths()[i]) == bold)] or [0]
    return get_font(int(rng.choice(choices)), int(rng.integers(lo, hi + 1)))


def random_word(rng: np.random.Generator, lo: int = 2, hi: int = 8, chars: str = WORD_CHARS) -> str:
    n = int(rng.integers(lo, hi + 1))
    return "".join(chars[i] for i in rng.integers(0, len(chars), n))


def random_text(rng: np.random.Generator, n_chars: int, chars: str = WORD_CHARS) -> str:
    """About n_chars characters of space-separated words (no leading/trailing or double spaces)."""
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < n_chars:
        words.append(random_word(rng, 1, 7, chars))
    return " ".join(words)[:n_chars].strip()


def _colors(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A (background, ink) pair with enough contrast to be legible."""
    bg = int(rng.integers(170, 256))
    ink = int(rng.integers(0, 90))
    tint = rng.integers(-20, 21, 3)
    bgc = tuple(int(np.clip(bg + t, 0, 255)) for t in tint)
    inkc = tuple(int(np.clip(ink + t, 0, 255)) for t in rng.integers(-20, 21, 3))
    if rng.random() < 0.25:  # light text on dark background
        bgc, inkc = tuple(255 - c for c in bgc), tuple(255 - c for c in inkc)
    return bgc, inkc


def _noise(img: Image.Image, rng: np.random.Generator, sigma: float) -> np.ndarray:
    arr = np.asarray(img, dtype=np.float32)
    arr = arr + rng.normal(0.0, sigma, arr.shape).astype(np.float32)
    return np.clip(arr, 0, 255).astype(np.uint8)


def text_line(rng: np.random.Generator, text: str, height_px: int = 32) -> np.ndarray:
    """A tightly cropped RGB image [H, W, 3] of one line of text with a small random margin."""
    font = pick_font(rng, height_px - 6, height_px + 6)
    bg, ink = _colors(rng)
    x0, y0, x1, y1 = font.getbbox(text)
    mx, my = int(rng.integers(2, 10)), int(rng.integers(2, 8))
    img = Image.new("RGB", (x1 - x0 + 2 * mx, y1 - y0 + 2 * my), bg)
    ImageDraw.Draw(img).text((mx - x0, my - y0), text, font=font, fill=ink)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.9))))
    return _noise(img, rng, float(rng.uniform(0, 8)))


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A light background with a random gradient, so scenes are not flat white."""
    base = rng.integers(200, 256, 3).astype(np.float32)
    ramp = np.linspace(0, 1, w, dtype=np.float32)[None, :, None] * rng.uniform(-40, 0, 3)[None, None, :]
    vramp = np.linspace(0, 1, h, dtype=np.float32)[:, None, None] * rng.uniform(-30, 0, 3)[None, None, :]
    arr = np.clip(base[None, None, :] + ramp + vramp, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def text_scene(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """2-5 horizontal text lines on a light background; returns (image [h,w,3], boxes [n,4] x0,y0,x1,y1)."""
    img = _background(rng, w, h)
    draw = ImageDraw.Draw(img)
    n = int(rng.integers(2, 6))
    slot = h // n
    boxes = []
    for k in range(n):
        font = pick_font(rng, 16, min(34, slot - 8))
        text = random_text(rng, int(rng.integers(4, 16)), LINE_CHARS)
        ink = tuple(int(c) for c in rng.integers(0, 80, 3))
        bx0, by0, bx1, by1 = font.getbbox(text)
        tw, th = bx1 - bx0, by1 - by0
        if tw > w - 16:
            continue
        x = int(rng.integers(8, w - tw - 7))
        y = k * slot + int(rng.integers(2, max(3, slot - th - 2)))
        draw.text((x - bx0, y - by0), text, font=font, fill=ink)
        boxes.append((x, y, x + tw, y + th))
    return _noise(img, rng, float(rng.uniform(0, 6))), np.asarray(boxes, np.float32).reshape(-1, 4)


def text_page(rng: np.random.Generator, size: int) -> np.ndarray:
    """An upright document page [size, size, 3]: a title and left-aligned paragraphs of small text."""
    scale = 2  # render at twice the size, then downsample like a scanned page
    w = h = size * scale
    img = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(225, 256, 3)))
    draw = ImageDraw.Draw(img)
    margin = int(rng.integers(10, 30)) * scale // 2
    y = margin
    title = pick_font(rng, 15 * scale, 20 * scale, bold=True)
    draw.text((margin, y), random_text(rng, int(rng.integers(6, 14))), font=title, fill=(0, 0, 0))
    y += int(title.size * 1.6)
    body = pick_font(rng, 8 * scale, 11 * scale, bold=False)
    line_h = int(body.size * 1.35)
    while y + line_h < h - margin:
        if rng.random() < 0.12:  # paragraph break
            y += line_h // 2
        n_chars = int((w - 2 * margin) / (body.size * 0.55) * rng.uniform(0.55, 1.0))
        draw.text((margin, y), random_text(rng, n_chars), font=body, fill=(20, 20, 20))
        y += line_h
    img = img.resize((size, size), Image.BILINEAR)
    return _noise(img, rng, float(rng.uniform(0, 5)))


def layout_page(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A document page [h, w, 3] with header, title, paragraphs, a figure with caption and a ruled table."""
    img = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(235, 256, 3)))
    draw = ImageDraw.Draw(img)
    m = int(rng.integers(30, 60))
    small = pick_font(rng, 9, 11, bold=False)
    draw.text((m, 12), random_text(rng, 30), font=small, fill=(90, 90, 90))
    draw.text((m, h - 26), random_text(rng, 20), font=small, fill=(90, 90, 90))
    y = m
    title = pick_font(rng, 20, 28, bold=True)
    draw.text((m, y), random_text(rng, int(rng.integers(10, 24))), font=title, fill=(0, 0, 0))
    y += int(title.size * 2)
    body = pick_font(rng, 11, 14, bold=False)
    per_line = int((w - 2 * m) / (body.size * 0.55))
    blocks = ["text", "figure", "text", "table", "text"]
    order = [blocks[i] for i in rng.permutation(len(blocks))]
    for kind in order:
        if y > h - 120:
            break
        if kind == "text":
            for _ in range(int(rng.integers(3, 8))):
                draw.text((m, y), random_text(rng, per_line), font=body, fill=(10, 10, 10))
                y += int(body.size * 1.4)
        elif kind == "figure":
            fh = int(rng.integers(90, 170))
            fw = int(rng.integers((w - 2 * m) // 2, w - 2 * m))
            fx = m + (w - 2 * m - fw) // 2
            draw.rectangle((fx, y, fx + fw, y + fh), fill=tuple(int(c) for c in rng.integers(120, 230, 3)))
            for _ in range(6):
                cx, cy = int(rng.integers(fx, fx + fw)), int(rng.integers(y, y + fh))
                r = int(rng.integers(6, 30))
                color = tuple(int(c) for c in rng.integers(0, 255, 3))
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
            y += fh + 6
            draw.text((fx, y), "Figure " + random_text(rng, 24), font=small, fill=(30, 30, 30))
            y += 24
        else:
            rows, cols = int(rng.integers(3, 6)), int(rng.integers(3, 5))
            cw, ch = (w - 2 * m) // cols, 22
            draw.text((m, y), "Table " + random_text(rng, 20), font=small, fill=(30, 30, 30))
            y += 18
            for r in range(rows + 1):
                draw.line((m, y + r * ch, m + cols * cw, y + r * ch), fill=(0, 0, 0), width=1)
            for c in range(cols + 1):
                draw.line((m + c * cw, y, m + c * cw, y + rows * ch), fill=(0, 0, 0), width=1)
            for r in range(rows):
                for c in range(cols):
                    cell_text = random_word(rng, 2, 6)
                    draw.text((m + c * cw + 4, y + r * ch + 4), cell_text, font=small, fill=(0, 0, 0))
            y += rows * ch + 16
    return _noise(img, rng, float(rng.uniform(0, 4)))


def glyph_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """3-6 large, separated glyphs on a cluttered background (a click-captcha); returns (image, boxes)."""
    img = _background(rng, size, size)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 8))):  # clutter: thin lines and faint blobs
        pts = rng.integers(0, size, 4)
        draw.line(tuple(int(p) for p in pts), fill=tuple(int(c) for c in rng.integers(120, 220, 3)), width=2)
    boxes: list[tuple[int, int, int, int]] = []
    cell = size // 3
    cells = rng.permutation(9)[: int(rng.integers(3, 7))]
    for c in cells:
        font = pick_font(rng, 34, 56)
        ch = string.ascii_uppercase[int(rng.integers(0, 26))]
        x0, y0, x1, y1 = font.getbbox(ch)
        gw, gh = x1 - x0, y1 - y0
        cx = (c % 3) * cell + int(rng.integers(4, max(5, cell - gw - 4)))
        cy = (c // 3) * cell + int(rng.integers(4, max(5, cell - gh - 4)))
        ink = tuple(int(v) for v in rng.integers(0, 110, 3))
        draw.text((cx - x0, cy - y0), ch, font=font, fill=ink)
        boxes.append((cx, cy, cx + gw, cy + gh))
    return _noise(img, rng, float(rng.uniform(0, 6))), np.asarray(boxes, np.float32).reshape(-1, 4)


#: The face in scikit-image's astronaut.png (512x512, public domain), x0, y0, x1, y1: the box OpenCV's YuNet draws
#: on the original image (score 0.94), used as the annotation of every pasted copy.
ASTRONAUT_FACE = (179.0, 63.0, 270.0, 174.0)


def face_scene(rng: np.random.Generator, size: int, photo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-3 copies of the astronaut's face (with some head and shoulders around it), each scaled to a face width of
    12-220 px, mirrored or not, brighter or darker, sometimes blurred, pasted without overlap on a gradient
    background with clutter; returns (image [size, size, 3] RGB, face boxes [n, 4]). Small, dark and blurred faces
    score near the detector's threshold: where compression shows."""
    img = _background(rng, size, size)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):
        pts = rng.integers(0, size, 4)
        draw.line(tuple(int(p) for p in pts), fill=tuple(int(c) for c in rng.integers(60, 220, 3)), width=3)
    fx0, fy0, fx1, fy1 = ASTRONAUT_FACE
    fw, fh = fx1 - fx0, fy1 - fy0
    # the crop around the face: half a face on each side, a third above, half below
    cx0, cy0 = max(0, int(fx0 - 0.5 * fw)), max(0, int(fy0 - 0.35 * fh))
    cx1, cy1 = min(photo.shape[1], int(fx1 + 0.5 * fw)), min(photo.shape[0], int(fy1 + 0.5 * fh))
    crop = Image.fromarray(np.ascontiguousarray(photo[cy0:cy1, cx0:cx1, :3]))
    placed: list[tuple[float, float, float, float]] = []
    boxes = []
    for _ in range(int(rng.integers(1, 4))):
        face_w = float(np.exp(rng.uniform(np.log(12), np.log(220))))
        k = face_w / fw
        pw, ph = int(round(crop.width * k)), int(round(crop.height * k))
        if pw >= size or ph >= size:
            continue
        for _try in range(20):
            x, y = int(rng.integers(0, size - pw)), int(rng.integers(0, size - ph))
            if all(x + pw <= a or a2 <= x or y + ph <= b or b2 <= y for a, b, a2, b2 in placed):
                break
        else:
            continue
        patch = crop.resize((pw, ph), Image.BILINEAR)
        mirror = rng.random() < 0.5
        if mirror:
            patch = patch.transpose(Image.FLIP_LEFT_RIGHT)
        if rng.random() < 0.3:
            patch = patch.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.0))))
        arr = np.asarray(patch, np.float32) * rng.uniform(0.35, 1.25)
        img.paste(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), (x, y))
        placed.append((x, y, x + pw, y + ph))
        left = (cx1 - fx1) if mirror else (fx0 - cx0)
        boxes.append((x + left * k, y + (fy0 - cy0) * k, x + left * k + fw * k, y + (fy0 - cy0) * k + fh * k))
    return _noise(img, rng, float(rng.uniform(0, 6))), np.asarray(boxes, np.float32).reshape(-1, 4)
