"""Executed instructions per kernel of an aarch64 library (``--profile`` on ``--target arm``), counted under qemu.

Time under qemu-aarch64 is the emulator's, so the arm target's profile counts what runs instead, with bench/arm's
TCG plugin (bench/arm/insn.py: instructions between two marker syscalls after a warm-up run, attributed to the
library's symbols by address). The counts are deterministic: the same library, input and ``-cpu`` give the same
numbers on any x86 machine. They are not time (a 16-lane ``sdot`` and a scalar ``madd`` count one each); the
record says so. Per-kernel attribution needs the kernels' names, so it runs only on a library built with
``arm{symbols=keep}`` (the default strips them to keep the library byte-identical across build folders).

A parallel kernel's body is its own function (``<kernel>_compute_``): its count is added to its kernel's. What is
not one of the build's kernels (the Relax VM in TVM's runtime, libc, the runner, the library's own glue) is listed
apart under ``runtime``, by file or symbol.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

#: qemu 7.2's -cpu for each arm{cpu=}: the core itself where qemu models it, else one with the same extensions
QEMU_CPU = {"cortex-a53": "cortex-a53", "cortex-a72": "cortex-a72", "cortex-a76": "cortex-a76",
            "cortex-a55": "cortex-a76"}
RUNS = 1  # counted runs after the warm-up; counts are deterministic, one is enough
BODY = re.compile(r"_compute_\d*$")


@functools.cache
def _insn():
    """bench/arm/insn.py of this installation (the package is the repository; bench/ ships beside targets/)."""
    path = Path(__file__).resolve().parents[1] / "bench" / "arm" / "insn.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("compress_graph_bench_arm_insn", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def missing(options: dict[str, str]) -> str | None:
    """Why the kernels cannot be counted here (None: they can)."""
    if options.get("symbols") != "keep":
        return ("the library's kernel symbols are stripped: build with arm{symbols=keep} for per-kernel "
                "instruction counts")
    for tool, why in (("qemu-aarch64", "qemu-user"), ("aarch64-linux-gnu-nm", "binutils-aarch64-linux-gnu"),
                      ("gcc", "gcc (builds the counting plugin)")):
        if shutil.which(tool) is None:
            return f"{tool} not found (install {why}; .ci/setup_arm.sh does)"
    insn = _insn()
    if insn is None:
        return "bench/arm/insn.py is not in this installation"
    if not (insn.sysroot() / ".stamp").is_file():
        return f"no aarch64 sysroot at {insn.sysroot()} (run .ci/setup_arm.sh)"
    return None


def count(lib_path, feed: list[np.ndarray], options: dict[str, str]) -> dict[str, Any]:
    """Instructions per inference, whole run and per function, of the library under qemu-aarch64 -cpu CPU."""
    why = missing(options)
    if why:
        return {"skipped": why}
    insn = _insn()
    cpu = QEMU_CPU.get(options["cpu"], "max")
    with tempfile.TemporaryDirectory(prefix="cg-arm-profile-") as work:
        counted = insn.count_library(Path(lib_path), feed, cpu, Path(work), runs=RUNS, with_mix=True)
    if "functions" not in counted:
        raise RuntimeError("the runner wrote no memory map: no per-function attribution")
    return {"counted": {"instructions": counted["instructions"], "functions": counted["functions"],
                        "mix": counted.get("mix", {}), "qemu_cpu": cpu, "threads_started": counted["threads_started"]}}


def summarize(counted: dict[str, Any], sources: dict[str, str], top: int) -> dict[str, Any]:
    """The ``target.profile`` record from ``count``'s result: kernels (a body's count added to its kernel's),
    heaviest first, with each kernel's schedule source, and the runtime's files apart."""
    from compress_graph.targets.kernel_profile import _source

    kernels: dict[str, float] = {}
    runtime: dict[str, float] = {}
    for name, n in counted["functions"].items():
        base = BODY.sub("", name)
        if base in sources or base.removesuffix("_prepacked") in sources:
            kernels[base] = kernels.get(base, 0) + n
        else:
            runtime[name] = runtime.get(name, 0) + n
    total = float(counted["instructions"])
    ranked = sorted(kernels.items(), key=lambda kv: (-kv[1], kv[0]))
    rows = [{"name": name, "schedule": _source(sources, name), "instructions": int(round(n)),
             "share": round(n / total, 4) if total else 0.0} for name, n in ranked[:top]]
    record: dict[str, Any] = {
        "status": "measured", "unit": "instructions",
        "method": (f"executed aarch64 instructions per inference under qemu-aarch64 -cpu {counted['qemu_cpu']} (TCG "
                   f"plugin of bench/arm, {RUNS} counted run after a warm-up, 1 thread), attributed to the library's "
                   "symbols; deterministic, and not time: one instruction counts one whatever its width"),
        "instructions": int(round(total)), "kernels_instructions": int(round(sum(kernels.values()))),
        "kernel_count": len(kernels), "kernels": rows,
        "runtime": {k: int(round(v)) for k, v in sorted(runtime.items(), key=lambda kv: -kv[1])},
        "mix": counted.get("mix", {}), "threads_started": counted.get("threads_started", 0),
    }
    rest = ranked[top:]
    if rest:
        n = sum(v for _, v in rest)
        record["other_kernels"] = {"kernels": len(rest), "instructions": int(round(n)),
                                   "share": round(n / total, 4) if total else 0.0}
    return record
