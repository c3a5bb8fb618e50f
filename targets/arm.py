"""aarch64 Linux with NEON (Cortex-A53/A55/A72/A76 boards: Raspberry Pi 3/4/5, RK35xx, i.MX8, Jetson CPUs)."""

from __future__ import annotations

from typing import Any

from compress_graph.ir.errors import UsageError
from compress_graph.targets.base import REQUANT_OPTION, Option, int_option

NAME = "arm"
DESCRIPTION = "aarch64 Linux CPU with NEON (default Cortex-A72 class)"
DEVICE = "cpu"
ELF_MACHINE = "AArch64"
ONNX_PASSES = ("fold-constants", "cleanup")
CHANNEL_BLOCK = 16  # the packed int8 kernels' channel block (the float convs tile 4 output channels)
TRIPLE = "aarch64-linux-gnu"
COMPILER = "aarch64-linux-gnu-g++"
# Cortex-A55/A76 are Armv8.2-A: the int8 convs run on sdot (targets/isa/arm_sdot.py); a53/a72 on smull/sadalp
# (arm_neon.py). Executed instruction mixes: bench/arm/README.md.
_MATTR = {
    "cortex-a53": ["+neon"],
    "cortex-a72": ["+neon"],
    "cortex-a55": ["+neon", "+v8.2a", "+dotprod", "+fullfp16"],
    "cortex-a76": ["+neon", "+v8.2a", "+dotprod", "+fullfp16"],
}
OPTIONS = {
    "cpu": Option("cortex-a72", "CPU core the code is tuned and compiled for", tuple(_MATTR)),
    "cores": Option("4", "threads the library runs with on the board (TVM num-cores)"),
    "schedule": Option("sample", "kernels without tuning records: one seeded MetaSchedule sample (sample) or "
                       "TVM's unscheduled loop nests (none)", ("sample", "none")),
    "fastmath": Option("on", "LLVM fast-math (faster exp/sigmoid, reassociated sums; error ~1e-6)", ("on", "off")),
    "requant": REQUANT_OPTION,
    "fp16": Option("false", "float kernels in half precision (Armv8.2-A FP16 arithmetic, cortex-a55/a76): float "
                   "models run float16 inside, float32 inputs and outputs; int8 (QDQ) models stay as they are",
                   ("false", "true")),
    "symbols": Option("strip", "kernel symbols in the library: strip (byte-identical across build folders) or "
                      "keep (named kernels for profilers: perf on the board, bench/arm's per-kernel counts)",
                      ("strip", "keep")),
}

def check_options(options: dict[str, str]) -> None:
    if options.get("fp16") == "true" and "+fullfp16" not in _MATTR[options["cpu"]]:
        fp16_cpus = ", ".join(c for c, m in _MATTR.items() if "+fullfp16" in m)
        raise UsageError(f"target 'arm': fp16=true needs a core with FP16 arithmetic (Armv8.2-A: {fp16_cpus}); "
                         f"{options['cpu']} has none")


def profile(lib_path, feed, options: dict[str, str]) -> dict[str, Any]:
    """``--profile``: executed instructions per kernel under qemu-aarch64 (targets/arm_profile.py; time under qemu
    is the emulator's). Needs a library built with ``arm{symbols=keep}``; else a skip with the reason."""
    from compress_graph.targets import arm_profile

    return arm_profile.count(lib_path, feed, options)


def tvm_target(options: dict[str, str]):
    import tvm

    return tvm.target.Target({
        "kind": "llvm", "mtriple": TRIPLE, "mcpu": options["cpu"], "mattr": _MATTR[options["cpu"]],
        "num-cores": int_option(options, "cores", NAME), "fast-math": options["fastmath"] == "on",
    })


def cross_compiler(options: dict[str, str]):
    from compress_graph.targets.toolchain import cross_compiler as make

    return make(COMPILER, keep_symbols=options.get("symbols") == "keep")


def verify(lib_path, feeds, options: dict[str, str], *, rpc: str | None = None, workdir=None) -> dict[str, Any]:
    """Run the library on the board through RPC when given, else under qemu-aarch64 with the prepared sysroot."""
    from compress_graph.targets import runners

    if rpc:
        return runners.run_rpc(lib_path, feeds, rpc, device="cpu")
    return runners.run_qemu(lib_path, feeds, arch="aarch64", workdir=workdir)
