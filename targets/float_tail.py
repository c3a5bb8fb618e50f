"""Float kernels of elementwise chains that would compute an exponential many times per output element.

A detector's float decode head (YOLOv8: per-scale reshapes, concat, sigmoid, the box arithmetic of split halves,
concat) fuses into one injective kernel; MetaSchedule's sampled schedule inlines every block into the last one, so
each output element re-evaluates the reshapes' index arithmetic and the sigmoid's exponential once per path that
reaches it (yolo_s: ~190 instructions per output element, 0.90 M of the a76 headline's 4.96 M). Here such a kernel
keeps every block with an exponential (and the outputs) as its own loop over a buffer and inlines the rest, so
each exponential is evaluated once per element; the kept loops are fused and vectorized where their extent allows.
"""

from __future__ import annotations

import tvm
from compress_graph.targets.schedule import SCHEDULED_ATTR

#: calls whose cost dwarfs a load: an element computed with one is not recomputed per consumer
EXPENSIVE_CALLS = ("tirx.exp", "tirx.exp2", "tirx.tanh", "tirx.sigmoid", "tirx.log", "tirx.erf", "tirx.pow",
                   "tirx.sqrt", "tirx.reinterpret")  # reinterpret: topi's fast_exp builds 2^n from the bits
#: a kernel with fewer spatial elements than this in a kept block is not worth a parallel loop
PARALLEL_MIN = 16384


class NotAFloatTail(ValueError):
    """The kernel is not an elementwise chain that recomputes an expensive op."""


def _calls_and_loads(stmt) -> tuple[set[str], dict[object, int]]:
    """The call names in a block's stored expression and how many times it loads each buffer."""
    calls: set[str] = set()
    loads: dict[object, int] = {}
    stack = [stmt.value] if hasattr(stmt, "value") else []
    while stack:
        node = stack.pop()
        kind = type(node).__name__
        if kind in ("TensorLoad", "BufferLoad"):  # TVM 0.27 tirx: TensorLoad, its buffer the ``source``
            buffer = node.source if hasattr(node, "source") else node.buffer
            loads[buffer] = loads.get(buffer, 0) + 1
            stack.extend(node.indices)
            continue
        if kind == "Call" and hasattr(node.op, "name"):
            calls.add(str(node.op.name))
        for field in ("a", "b", "value", "condition", "true_value", "false_value"):
            child = getattr(node, field, None)
            if isinstance(child, tvm.ir.expr.Expr):
                stack.append(child)
        stack.extend(c for c in (getattr(node, "args", None) or []) if isinstance(c, tvm.ir.expr.Expr))
    return calls, loads


def schedule_float_tail(func, lanes: int):
    """The scheduled PrimFunc for such a kernel; raises NotAFloatTail for any other (reductions, no expensive op,
    or one evaluated once per element anyway)."""
    from tvm import s_tir

    if func.attrs is not None and SCHEDULED_ATTR in func.attrs:
        raise NotAFloatTail("scheduled")
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    if len(blocks) < 3:
        raise NotAFloatTail("too few blocks")
    stmts = [sch.get(b) for b in blocks]
    if any(iv.iter_type != tvm.tirx.IterVar.DataPar for s in stmts for iv in s.iter_vars):
        raise NotAFloatTail("has a reduction")
    if any(len(s.writes) != 1 for s in stmts):
        raise NotAFloatTail("a block writes several buffers")
    writes = [s.writes[0].source for s in stmts]
    if any(str(b.dtype) not in ("float32", "float16") for b in writes):
        raise NotAFloatTail("not float32 / float16")
    scratch = set(sch.get(sch.get_sblock("root")).alloc_buffers)  # the rest are the kernel's parameters
    if any(type(s.body).__name__ != "BufferStore" for s in stmts):
        raise NotAFloatTail("a block is not one store")
    info = [_calls_and_loads(s.body) for s in stmts]
    expensive = {i for i, (calls, _) in enumerate(info) if any(c in EXPENSIVE_CALLS for c in calls)}
    if not expensive:
        raise NotAFloatTail("no expensive op")
    kept = expensive | {i for i, b in enumerate(writes) if b not in scratch}

    def uses(i: int, memo: dict[int, int]) -> int:
        """How many times block i's element is evaluated per element of the kept blocks that read it, if every
        block outside ``kept`` is inlined into its readers."""
        if i not in memo:
            memo[i] = sum(n * (1 if j in kept else uses(j, memo)) for j, (_, loads) in enumerate(info)
                          if j != i and (n := loads.get(writes[i], 0)))
        return memo[i]

    if max(uses(i, {}) for i in expensive) < 2:
        raise NotAFloatTail("each expensive element is used once")
    while True:  # anything evaluated twice or more per use is kept too (fast_exp reads its input 18 times)
        memo: dict[int, int] = {}
        more = {i for i in range(len(blocks)) if i not in kept and uses(i, memo) >= 2}
        if not more:
            break
        kept |= {max(more)}  # the last one first: keeping it may make its producers single-use
    for i, block in enumerate(blocks):
        if i not in kept:
            sch.compute_inline(block)
    for i in sorted(kept):
        loops = sch.get_loops(blocks[i])
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        extent = int(sch.get(fused).extent)
        width = next((w for w in (lanes, lanes // 2, lanes // 4) if w >= 2 and extent % w == 0), 0)
        if width and extent >= 2 * width:
            outer, inner = sch.split(fused, [None, width])
            sch.vectorize(inner)
            if extent >= PARALLEL_MIN:
                sch.parallel(outer)
        elif extent >= PARALLEL_MIN:
            sch.parallel(fused)
    return sch.mod["main"].with_attr(SCHEDULED_ATTR, True)
