"""32-bit Armv7-A Linux, hard-float NEON (Cortex-A7/A9/A15 boards, Raspberry Pi 2, older SoCs)."""

from __future__ import annotations

from typing import Any

from compress_graph.targets.base import REQUANT_OPTION, Option, int_option

NAME = "armv7"
DESCRIPTION = "32-bit Armv7-A Linux CPU, hard-float NEON (compile only on x86: no armv7 TVM wheel exists)"
DEVICE = "cpu"
ELF_MACHINE = "ARM"
ONNX_PASSES = ("fold-constants", "cleanup")
CHANNEL_BLOCK = 4  # the float convs tile 4 output channels (no packed int8 kernels for armv7)
TRIPLE = "armv7l-linux-gnueabihf"
COMPILER = "arm-linux-gnueabihf-g++"
OPTIONS = {
    "cpu": Option("cortex-a7", "CPU core", ("cortex-a7", "cortex-a9", "cortex-a15", "cortex-a17")),
    "cores": Option("4", "threads the library runs with on the board (TVM num-cores)"),
    "schedule": Option("sample", "kernels without tuning records: one seeded MetaSchedule sample (sample) or "
                       "TVM's unscheduled loop nests (none)", ("sample", "none")),
    "fastmath": Option("on", "LLVM fast-math", ("on", "off")),
    "requant": REQUANT_OPTION,
}


def tvm_target(options: dict[str, str]):
    import tvm

    # "mfloat-abi": "hard" is required, else linking fails with "uses VFP register arguments".
    return tvm.target.Target({
        "kind": "llvm", "mtriple": TRIPLE, "mcpu": options["cpu"], "mattr": ["+neon", "+vfp4"],
        "mfloat-abi": "hard", "num-cores": int_option(options, "cores", NAME),
        "fast-math": options["fastmath"] == "on",
    })


def cross_compiler(options: dict[str, str]):
    from compress_graph.targets.toolchain import cross_compiler as make

    return make(COMPILER)


def verify(lib_path, feeds, options: dict[str, str], *, rpc: str | None = None, workdir=None) -> dict[str, Any]:
    """Through RPC on a board with a TVM runtime; locally impossible (PyPI has no armv7 apache-tvm wheel)."""
    from compress_graph.targets import runners

    if rpc:
        return runners.run_rpc(lib_path, feeds, rpc, device="cpu")
    return runners.skipped("no armhf TVM runtime can be installed from the package registries "
                           "(PyPI has no armv7 apache-tvm wheel); the library was checked as an ARM ELF only")
