"""The build machine's own CPU: for local checks and benchmarks against onnxruntime."""

from __future__ import annotations

import os
from typing import Any

from compress_graph.targets.base import REQUANT_OPTION, Option, int_option

NAME = "host"
DESCRIPTION = "this machine's CPU (LLVM picks the host CPU), for local checks and benchmarks"
DEVICE = "cpu"
ELF_MACHINE = ""  # whatever the host is
ONNX_PASSES = ("fold-constants", "cleanup")
CHANNEL_BLOCK = 16  # the packed int8 kernels' channel block (the float convs tile 4 output channels)
OPTIONS = {
    "cores": Option(str(min(os.cpu_count() or 1, 8)), "threads (TVM num-cores)"),
    "schedule": Option("sample", "kernels without tuning records: one seeded MetaSchedule sample (sample) or "
                       "TVM's unscheduled loop nests (none)", ("sample", "none")),
    "fastmath": Option("on", "LLVM fast-math", ("on", "off")),
    "requant": REQUANT_OPTION,
}


def tvm_target(options: dict[str, str]):
    import tvm

    mcpu = tvm.target.codegen.llvm_get_system_cpu() if hasattr(tvm.target, "codegen") else None
    target = {"kind": "llvm", "num-cores": int_option(options, "cores", NAME),
              "fast-math": options["fastmath"] == "on"}
    if mcpu and mcpu != "generic":
        target["mcpu"] = mcpu
    return tvm.target.Target(target)


def cross_compiler(options: dict[str, str]):
    return None  # the default host C++ compiler


def verify(lib_path, feeds, options: dict[str, str], *, rpc: str | None = None, workdir=None) -> dict[str, Any]:
    from compress_graph.targets import runners

    if rpc:
        return runners.run_rpc(lib_path, feeds, rpc, device="cpu")
    return runners.run_local(lib_path, feeds)
