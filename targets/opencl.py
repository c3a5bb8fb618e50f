"""OpenCL GPUs on aarch64 Linux boards: Arm Mali (RK3588, Amlogic, ...) and Qualcomm Adreno (Snapdragon).

One class serves both names; each instance has the attributes every target module has (see base.py).
Kernels stay OpenCL C source in the library: the board's OpenCL driver compiles them at load time.
"""

from __future__ import annotations

from typing import Any

from compress_graph.targets.base import Option, int_option


class OpenCLTarget:
    DEVICE = "opencl"
    ELF_MACHINE = "AArch64"
    ONNX_PASSES = ("fold-constants", "cleanup")
    COMPILER = "aarch64-linux-gnu-g++"

    def __init__(self, name: str, description: str, max_threads: int):
        self.NAME = name
        self.DESCRIPTION = description
        self._max_threads = max_threads
        self.OPTIONS = {
            "cores": Option("4", "host CPU threads"),
            "threads": Option(str(max_threads), "max work-group size of the GPU"),
        }

    def tvm_target(self, options: dict[str, str]):
        import tvm

        host = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"],
                "num-cores": int_option(options, "cores", self.NAME)}
        return tvm.target.Target({
            "kind": "opencl", "device": self.NAME, "max_threads_per_block": int_option(options, "threads", self.NAME),
            "max_shared_memory_per_block": 32768, "thread_warp_size": 1, "host": host,
        })

    def cross_compiler(self, options: dict[str, str]):
        from compress_graph.targets.toolchain import cross_compiler as make

        return make(self.COMPILER)

    def verify(self, lib_path, feeds, options: dict[str, str], *, rpc: str | None = None,
               workdir=None) -> dict[str, Any]:
        from compress_graph.targets import runners

        if rpc:
            return runners.run_rpc(lib_path, feeds, rpc, device="opencl")
        return runners.skipped(f"an OpenCL library runs only on the {self.NAME} GPU: pass --rpc tracker:port:key")


MALI = OpenCLTarget("mali", "Arm Mali GPU via OpenCL (aarch64 Linux host)", 256)
ADRENO = OpenCLTarget("adreno", "Qualcomm Adreno GPU via OpenCL, texture-aware schedules (aarch64 Linux host)", 256)
