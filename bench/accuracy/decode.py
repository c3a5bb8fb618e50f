"""Each model's own output decoding (CTC, DB text maps, PicoDet GFL heads, YOLOX grids) and the task metrics.

Decoding follows what the shipping package does with the raw outputs (thresholds from its config), because
a compressed model is only as good as the decisions made from its outputs: a score that drops under the
package's threshold is a lost detection even if the tensor is "close".
"""

from __future__ import annotations

import numpy as np

# ----------------------------------------------------------------------------------------------- metrics


def top1_accuracy(pred: list[int], labels: list[int]) -> float:
    return 100.0 * float(np.mean(np.asarray(pred) == np.asarray(labels))) if labels else 0.0


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def char_accuracy(pred: list[str], labels: list[str]) -> float:
    """1 - total edit distance / total reference length, in percent (can go below 0; clipped)."""
    errors = sum(edit_distance(p, t) for p, t in zip(pred, labels, strict=True))
    total = sum(len(t) for t in labels)
    return max(0.0, 100.0 * (1.0 - errors / max(total, 1)))


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def match_counts(pred: dict, ref: dict, iou: float = 0.5) -> tuple[int, int, int]:
    """(TP, FP, FN) for one image: greedy matching by score, same class, IoU >= iou."""
    pb, ps, pc = pred["boxes"], pred["scores"], pred["classes"]
    rb, rc = ref["boxes"], ref["classes"]
    ious = iou_matrix(pb, rb)
    used = np.zeros(len(rb), bool)
    tp = 0
    for i in np.argsort(-ps, kind="stable"):
        cand = np.where((~used) & (rc == pc[i]) & (ious[i] >= iou))[0]
        if len(cand):
            used[cand[np.argmax(ious[i, cand])]] = True
            tp += 1
    return tp, len(pb) - tp, len(rb) - tp


def detection_f1(preds: list[dict], refs: list[dict], iou: float = 0.5) -> float:
    tp = fp = fn = 0
    for p, r in zip(preds, refs, strict=True):
        a, b, c = match_counts(p, r, iou)
        tp, fp, fn = tp + a, fp + b, fn + c
    return 100.0 * 2 * tp / max(2 * tp + fp + fn, 1)


def detections(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> dict:
    return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "scores": np.asarray(scores, np.float32),
            "classes": np.asarray(classes, np.int64)}


# ----------------------------------------------------------------------------------------------- decoders


def nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> np.ndarray:
    order = np.argsort(-scores, kind="stable")
    keep = []
    while len(order):
        i = order[0]
        keep.append(i)
        ious = iou_matrix(boxes[i : i + 1], boxes[order[1:]])[0]
        order = order[1:][ious <= thresh]
    return np.asarray(keep, np.int64)


def classwise_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, thresh: float) -> np.ndarray:
    keep = [np.where(classes == c)[0][nms(boxes[classes == c], scores[classes == c], thresh)]
            for c in np.unique(classes)]
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)


def ctc_greedy(probs: np.ndarray, charset: list[str]) -> str:
    """PaddleOCR CTC decoding: argmax per step, merge repeats, drop blank (index 0)."""
    idx = probs.argmax(-1)
    out = []
    prev = -1
    for i in idx:
        if i != prev and i != 0 and i - 1 < len(charset):
            out.append(charset[i - 1])
        prev = i
    return "".join(out)


def _label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    try:
        from scipy import ndimage

        return ndimage.label(mask)
    except ImportError:  # pure numpy fallback: propagate the smallest label until stable
        h, w = mask.shape
        lab = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), 0)
        big = h * w + 1
        while True:
            cur = np.where(mask, lab, big)
            pad = np.pad(cur, 1, constant_values=big)
            shifts = [pad[1:-1, 1:-1], pad[:-2, 1:-1], pad[2:, 1:-1], pad[1:-1, :-2], pad[1:-1, 2:]]
            nb = np.minimum.reduce(shifts)
            new = np.where(mask, nb, 0)
            if np.array_equal(new, lab):
                break
            lab = new
        uniq = np.unique(lab[lab > 0])
        remap = np.zeros(h * w + 2, np.int64)
        remap[uniq] = np.arange(1, len(uniq) + 1)
        return remap[lab], len(uniq)


def db_boxes(prob: np.ndarray, thresh: float = 0.3, box_thresh: float = 0.5, unclip: float = 1.6) -> dict:
    """DBNet post-processing with axis-aligned boxes: threshold, components, box score, unclip."""
    labels, n = _label_components(prob > thresh)
    boxes, scores = [], []
    h, w = prob.shape
    for k in range(1, n + 1):
        ys, xs = np.nonzero(labels == k)
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        if min(x1 - x0, y1 - y0) < 3:
            continue
        score = float(prob[y0:y1, x0:x1].mean())
        if score < box_thresh:
            continue
        bw, bh = x1 - x0, y1 - y0
        d = bw * bh * unclip / (2 * (bw + bh))
        boxes.append((max(0, x0 - d), max(0, y0 - d), min(w, x1 + d), min(h, y1 + d)))
        scores.append(score)
    return detections(boxes, scores, np.zeros(len(boxes)))


def picodet_boxes(outputs: list[np.ndarray], in_h: int, in_w: int, strides=(8, 16, 32, 64),
                  score_thresh: float = 0.5, nms_thresh: float = 0.5) -> dict:
    """PicoDet (GFL) head: per-level class scores [N, K] and DFL box distributions [N, 4*(reg_max+1)]."""
    n_levels = len(strides)
    all_boxes, all_scores, all_cls = [], [], []
    for lvl, stride in enumerate(strides):
        scores = outputs[lvl][0]
        dist = outputs[lvl + n_levels][0]
        fw = int(np.ceil(in_w / stride))
        ys, xs = np.divmod(np.arange(scores.shape[0]), fw)
        cls = scores.argmax(1)
        best = scores.max(1)
        sel = best > score_thresh
        if not sel.any():
            continue
        bins = dist[sel].reshape(-1, 4, dist.shape[1] // 4)
        bins = np.exp(bins - bins.max(-1, keepdims=True))
        bins /= bins.sum(-1, keepdims=True)
        ltrb = (bins * np.arange(bins.shape[-1])).sum(-1) * stride
        cx, cy = (xs[sel] + 0.5) * stride, (ys[sel] + 0.5) * stride
        box = np.stack([cx - ltrb[:, 0], cy - ltrb[:, 1], cx + ltrb[:, 2], cy + ltrb[:, 3]], 1)
        all_boxes.append(np.clip(box, 0, [in_w, in_h, in_w, in_h]))
        all_scores.append(best[sel])
        all_cls.append(cls[sel])
    if not all_boxes:
        return detections(np.zeros((0, 4)), [], [])
    boxes, scores, cls = np.concatenate(all_boxes), np.concatenate(all_scores), np.concatenate(all_cls)
    keep = classwise_nms(boxes, scores, cls, nms_thresh)
    return detections(boxes[keep], scores[keep], cls[keep])


def yolox_boxes(output: np.ndarray, in_size: int, strides=(8, 16, 32), score_thresh: float = 0.1,
                nms_thresh: float = 0.45) -> dict:
    """YOLOX head [N, 4+1+K] (grid offsets, log sizes, objectness, class scores) as ddddocr decodes it."""
    pred = output[0]
    grids, steps = [], []
    for s in strides:
        g = in_size // s
        yv, xv = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
        grids.append(np.stack([xv, yv], -1).reshape(-1, 2))
        steps.append(np.full((g * g, 1), s))
    grid, step = np.concatenate(grids), np.concatenate(steps)
    xy = (pred[:, :2] + grid) * step
    wh = np.exp(np.clip(pred[:, 2:4], -10, 10)) * step
    cls_scores = pred[:, 5:] * pred[:, 4:5]
    cls, score = cls_scores.argmax(1), cls_scores.max(1)
    sel = score > score_thresh
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1)[sel]
    score, cls = score[sel], cls[sel]
    keep = classwise_nms(boxes, score, cls, nms_thresh) if len(boxes) else np.zeros(0, np.int64)
    return detections(boxes[keep], score[keep], cls[keep])


def yunet_boxes(outputs: list[np.ndarray], in_h: int, in_w: int, strides=(8, 16, 32), score_thresh: float = 0.6,
                nms_thresh: float = 0.3) -> dict:
    """OpenCV YuNet (2023mar): per stride cls, obj (sigmoid), bbox (dx, dy, log w, log h) as FaceDetectorYN decodes
    them: score = sqrt(cls * obj), centre = (cell + d) * stride, size = exp(log) * stride."""
    n = len(strides)
    cls, obj, bbox = outputs[:n], outputs[n:2 * n], outputs[2 * n:3 * n]
    all_boxes, all_scores = [], []
    for k, s in enumerate(strides):
        cols = in_w // s
        idx = np.arange((in_h // s) * cols)
        r, c = idx // cols, idx % cols
        score = np.sqrt(np.clip(cls[k][0, :, 0], 0, 1) * np.clip(obj[k][0, :, 0], 0, 1))
        b = bbox[k][0]
        cx, cy = (c + b[:, 0]) * s, (r + b[:, 1]) * s
        w, h = np.exp(np.clip(b[:, 2], -10, 10)) * s, np.exp(np.clip(b[:, 3], -10, 10)) * s
        sel = score > score_thresh
        all_boxes.append(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)[sel])
        all_scores.append(score[sel])
    boxes, scores = np.concatenate(all_boxes), np.concatenate(all_scores)
    keep = nms(boxes, scores, nms_thresh) if len(boxes) else np.zeros(0, np.int64)
    return detections(boxes[keep], scores[keep], np.zeros(len(keep)))
