"""Hand-written kernel families per instruction set, behind one lookup by target features.

Each module describes one ISA's 8-bit dot product for the packed int8 convs (targets/int8/packed.py lays the
data out, targets/int8/schedule.py tiles the loops): ``NAME``, ``matches(target)``, the tensor intrinsic that
computes ``C[16] += sum_k (A[k] - INPUT_OFFSET) * B[16, k]`` over 4 k (uint8 A, int8 B, int32 C) and its
``register_intrinsic()``, and ``REG_N``, the output pixels one register tile holds; ``PAIRS`` (optional): the
intrinsic accumulates ``C[16, PAIRS]`` partial sums that the epilogue adds; ``rows_step(target)`` (optional): the
intrinsic and output channels per pass of a step on weight rows (packed.pack_kernel_rows) for 16-channel input
blocks, with ``ROWS_PAIRS``, ``ROWS_REG_N`` and ``ROWS_REDUCE_INTRIN`` (arm_neon); ``INTRIN_SMALL`` (optional),
with ``SMALL_LIMIT`` and ``SMALL_REG_N``: the 16x4 step on int8 weights for convs whose every weight is within
+-SMALL_LIMIT (x86_avx2: ``vpmaddubsw`` on 7-bit weights), registered by ``register_intrinsic()``; a family with it
makes ``host`` ask ``quant`` for 7-bit weights (targets/host.preferences). A new ISA is a new module here, not a
branch in the schedules.
"""

from __future__ import annotations

from types import ModuleType

from compress_graph.targets.isa import arm_neon, arm_sdot, x86_avx2, x86_vnni

#: int8 dot-product kernel families, first match wins
INT8_DOT: tuple[ModuleType, ...] = (x86_vnni, x86_avx2, arm_sdot, arm_neon)


def int8_dot(target) -> ModuleType | None:
    """The int8 dot-product family for ``target`` (a tvm Target), or None when it has none."""
    for family in INT8_DOT:
        if family.matches(target):
            return family
    return None


def float_lanes(target) -> int | None:
    """float32 lanes of the target's vector registers (aarch64 NEON 4, x86 AVX-512 16 / AVX2 8 / SSE 4); None
    for targets that are not CPUs TVM compiles with LLVM."""
    from compress_graph.targets.isa import features

    if str(target.kind.name) != "llvm":
        return None
    if not features.arch_is(target, features.X86, default=True):
        return 4  # aarch64 / armv7 NEON and others: 128-bit vectors
    if features.has(target, "avx512f"):
        return 16
    if features.has(target, "avx2"):
        return 8
    return 4


def float_oc_tile(target) -> int:
    """Output channels per fp32 conv register tile: 8 where the ISA has 32 vector registers (aarch64, AVX-512: 16
    accumulators of 8 channels x 2 pixel vectors, one weight broadcast per two FMAs as with 4, but each input vector
    loaded once for 8 channels), else 4 (AVX2 / SSE: 16 registers). Measured: aarch64 instructions -3 to -8 % on the
    5 bundled models (pose_s 24.2 -> 22.9 M), AVX-512 host time resnet_s 1.80 -> 1.37x onnxruntime.
    ``COMPRESS_GRAPH_FP32_OC_TILE`` overrides it (for such measurements)."""
    import os

    from compress_graph.targets.isa import features

    override = os.environ.get("COMPRESS_GRAPH_FP32_OC_TILE")
    if override:
        return int(override)
    if not features.arch_is(target, features.X86, default=True):
        return 8 if features.arch_is(target, features.AARCH64, default=False) else 4
    return 8 if features.has(target, "avx512f") else 4


def float_channel_tiles(target) -> list[tuple[int, int, bool]]:
    """(output channels, most output pixels, taps unrolled) of the channel-vector fp32 conv tiles
    (targets/fp32_schedule.schedule_conv_channels: kxk convs) in preference order, a conv taking the first whose
    channel count divides its own; [] where the pixel-vector schedule stays (armv7: 16 vector registers).
    Measured (aarch64: instructions on cortex-a72 under qemu; AVX-512: this host's time, 1 thread; AVX2:
    instructions under qemu -cpu Haswell), ours / onnxruntime fp32, pixel-vector -> channel-vector: aarch64 (8, 8)
    resnet_s 0.76 -> 0.66, pose_s 0.97 -> 0.86, yolo_s 0.89 -> 0.81 ((16, 6): 0.72 / 0.93 / 0.83; (8, 12): pose_s
    1.04); AVX-512 (16, 12) resnet_s 1.38 -> 1.00x, pose_s 1.94 -> 1.00x, yolo_s 0.93 -> 0.70x ((16, 8): pose_s
    1.12x); AVX2 (8, 8) resnet_s 1.53 -> 1.20, pose_s 1.40 -> 1.05, yolo_s 1.25 -> 1.05 ((8, 12): pose_s 1.14), then
    (16, 4) with the taps unrolled where the channels allow, (8, 8) elsewhere: resnet_s 1.02 -> 0.95, pose_s 1.02
    -> 0.94 ((16, 4) rolled: resnet_s 1.01; (16, 6) unrolled: pose_s 1.12, 12 accumulators + 8 shared broadcasts
    spill; (8, 8) unrolled: unchanged). ``COMPRESS_GRAPH_FP32_CHANNEL_TILE`` ("C,P[,u];C,P..." or "off")
    overrides it (for such measurements)."""
    import os

    from compress_graph.targets.isa import features

    override = os.environ.get("COMPRESS_GRAPH_FP32_CHANNEL_TILE")
    if override:
        if override == "off":
            return []
        tiles = []
        for part in override.split(";"):
            fields = part.split(",")
            tiles.append((int(fields[0]), int(fields[1]), fields[2:] == ["u"]))
        return tiles
    lanes = float_lanes(target)
    if lanes is None:
        return []
    if not features.arch_is(target, features.X86, default=True):
        return [(8, 8, False)] if features.arch_is(target, features.AARCH64, default=False) else []
    return {16: [(16, 12, False)], 8: [(16, 4, True), (8, 8, False)]}.get(lanes, [])
