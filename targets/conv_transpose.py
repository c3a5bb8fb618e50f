"""A strided transposed convolution as ``sh * sw`` ordinary convolutions, one per output phase.

Output pixel ``(y, x)`` of a transposed conv with strides ``(sh, sw)`` only receives the kernel taps ``t`` with
``(y % sh + t - pad) % sh == 0`` (along each axis, ``pad`` the equivalent conv's padding of the dilated input).
So the outputs of one phase ``(y % sh, x % sw)`` are an ordinary stride-1 conv of the *undilated* input with
those taps, and the full output interleaves the phases. The usual lowering (dilate the input with zeros, pad,
convolve) multiplies every inserted zero: 3/4 of its MACs at stride 2. Used by the int8 lowering
(targets/int8/lower.py) and by the float rewrite before legalization (targets/float_rewrites.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Phase:
    ry: int
    rx: int
    taps_y: list[int]
    taps_x: list[int]
    pad: tuple[int, int, int, int]  # top, left, bottom, right of the input; negative: crop

    def kernel(self, w_conv: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(w_conv[:, :, self.taps_y][:, :, :, self.taps_x])


def equivalent_kernel(w: np.ndarray) -> np.ndarray:
    """IOHW transposed-conv weights -> the OIHW kernel of the equivalent conv over the dilated input."""
    return np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))


def phases(in_hw, kernel_hw, strides, padding, output_padding) -> tuple[tuple[int, int], list[Phase]] | None:
    """((out_h, out_w), phases) of a groups-1, dilation-1 transposed conv; None if some phase gets no tap (a
    kernel smaller than the stride) or the stride is 1 (nothing to split)."""
    (h, w), (kh, kw), (sh, sw) = in_hw, kernel_hw, strides
    top, left, bottom, right = padding
    oph, opw = output_padding
    if (sh, sw) == (1, 1):
        return None
    out_h = (h - 1) * sh - top - bottom + kh + oph
    out_w = (w - 1) * sw - left - right + kw + opw

    def axis(r: int, stride: int, k: int, pad: int, size: int, out: int):
        taps = [t for t in range(k) if (r + t - pad) % stride == 0]
        if not taps:
            return None
        first = (r + taps[0] - pad) // stride  # input index of the first tap for the phase's output 0
        last = len(range(r, out, stride)) - 1 + first + len(taps) - 1  # ... of the last tap for its last output
        return taps, -first, last - (size - 1)

    result = []
    for ry in range(sh):
        for rx in range(sw):
            ay = axis(ry, sh, kh, kh - 1 - top, h, out_h)
            ax = axis(rx, sw, kw, kw - 1 - left, w, out_w)
            if ay is None or ax is None:
                return None
            result.append(Phase(ry, rx, ay[0], ax[0], (ay[1], ax[1], ay[2], ax[2])))
    return (out_h, out_w), result


def interleave(phase_tensors, sh: int, sw: int, out_h: int, out_w: int):
    """TE: output ``(y, x)`` from phase ``(y % sh, x % sw)`` at ``(y // sh, x // sw)`` (NCHW or packed NCHW[b]c
    phase tensors of one dtype, in row-major phase order)."""
    from tvm import te, tirx

    shape = list(phase_tensors[0].shape)
    shape[2], shape[3] = out_h, out_w

    def value(n, c, y, x, *rest):
        out = None
        for index in range(len(phase_tensors) - 1, -1, -1):
            ry, rx = divmod(index, sw)
            here = phase_tensors[index][(n, c, y // sh, x // sw, *rest)]
            out = here if out is None else tirx.if_then_else(  # lazy: other phases may be a row shorter
                tirx.all(y % sh == ry, x % sw == rx), here, out)
        return out

    return te.compute(shape, value, name="interleave_phases")
