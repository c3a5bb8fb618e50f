"""NVIDIA Jetson (CUDA): device code compiled ahead of time to cubin with nvcc, host code for aarch64."""

from __future__ import annotations

from typing import Any

from compress_graph.targets.base import Option, int_option

NAME = "jetson"
DESCRIPTION = "NVIDIA Jetson GPU via CUDA (default Orin sm_87; sm_110 Thor, sm_72 Xavier, sm_62 TX2, sm_53 Nano)"
DEVICE = "cuda"
ELF_MACHINE = "AArch64"
ONNX_PASSES = ("fold-constants", "cleanup")
COMPILER = "aarch64-linux-gnu-g++"
ARCHES = ("sm_87", "sm_110", "sm_72", "sm_62", "sm_53")
OPTIONS = {
    "arch": Option("sm_87", "GPU architecture the cubin is compiled for", ARCHES),
    "cores": Option("6", "host CPU threads"),
    "format": Option("cubin", "device code shipped: cubin (no compiler on the board), ptx (JIT by the driver) or "
                     "source (CUDA C, compiled by the board's CUDA at load time; for arches the local nvcc lacks)",
                     ("cubin", "ptx", "source")),
}


def tvm_target(options: dict[str, str]):
    import tvm

    host = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"],
            "num-cores": int_option(options, "cores", NAME)}
    return tvm.target.Target({
        "kind": "cuda", "arch": options["arch"], "max_threads_per_block": 1024, "thread_warp_size": 32,
        "max_shared_memory_per_block": 49152, "registers_per_block": 65536, "host": host,
    })


def cross_compiler(options: dict[str, str]):
    from compress_graph.targets.toolchain import cross_compiler as make

    return make(COMPILER)


def verify(lib_path, feeds, options: dict[str, str], *, rpc: str | None = None, workdir=None) -> dict[str, Any]:
    from compress_graph.targets import runners

    if rpc:
        return runners.run_rpc(lib_path, feeds, rpc, device="cuda")
    return runners.skipped("a CUDA library runs only on the GPU: pass --rpc tracker:port:key of a Jetson board")
