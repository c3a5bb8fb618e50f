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
    "isa": Option("auto", "x86 instruction set of the library: this machine's CPU (auto), or build for another x86 "
                  "device: avx2 (Haswell: AVX2+FMA), avx512 (Skylake-AVX512), vnni (Cascade Lake: AVX-512 VNNI)",
                  ("auto", "avx2", "avx512", "vnni")),
    "symbols": Option("strip", "kernel symbols in the library: strip (byte-identical across build folders) or "
                      "keep (named kernels for profilers: perf, bench/x86's per-kernel counts)", ("strip", "keep")),
}

#: LLVM CPU models that stand for each x86 level (what the int8/fp32 kernels and LLVM's codegen then assume)
ISA_CPUS = {"avx2": "haswell", "avx512": "skylake-avx512", "vnni": "cascadelake"}


def tvm_target(options: dict[str, str]):
    import tvm

    isa = options.get("isa", "auto")
    if isa in ISA_CPUS:
        import platform

        if platform.machine() not in ("x86_64", "AMD64"):
            from compress_graph.ir.errors import UsageError

            raise UsageError(f"host{{isa={isa}}}: an x86 instruction set, but this machine is {platform.machine()}")
        mcpu = ISA_CPUS[isa]
    else:
        mcpu = tvm.target.codegen.llvm_get_system_cpu() if hasattr(tvm.target, "codegen") else None
    target = {"kind": "llvm", "num-cores": int_option(options, "cores", NAME),
              "fast-math": options["fastmath"] == "on"}
    if mcpu and mcpu != "generic":
        target["mcpu"] = mcpu
    return tvm.target.Target(target)


def preferences(options: dict[str, str]) -> dict[str, Any]:
    """``weight_bits`` 7 where the library's int8 family has a faster step for such weights (x86 without VNNI:
    ``vpmaddubsw``, which would saturate on 8-bit weights; targets/isa/x86_avx2), else nothing."""
    from compress_graph.targets import isa

    family = isa.int8_dot(tvm_target(options))
    return {"weight_bits": 7} if family is not None and hasattr(family, "SMALL_LIMIT") else {}


def cross_compiler(options: dict[str, str]):
    from compress_graph.targets.toolchain import host_compiler

    return host_compiler(keep_symbols=options.get("symbols") == "keep")


def verify(lib_path, feeds, options: dict[str, str], *, rpc: str | None = None, workdir=None) -> dict[str, Any]:
    from compress_graph.targets import runners

    if rpc:
        return runners.run_rpc(lib_path, feeds, rpc, device="cpu")
    missing = missing_features(options.get("isa", "auto"))
    if missing:
        return {"method": "local", "skipped": f"this CPU lacks {', '.join(missing)} (built for "
                                              f"isa={options['isa']}); run it on such a CPU or under an emulator"}
    return runners.run_local(lib_path, feeds)


#: --profile times each kernel from the VM's call hook, which only its bytecode interpreter calls (targets/build.py)
PROFILE_VM_EXEC = "bytecode"


def profile(lib_path, feed, options: dict[str, str]) -> dict[str, Any]:
    """Time each kernel of the library in this process (``--profile``; targets/kernel_profile.py)."""
    from compress_graph.targets import kernel_profile

    missing = missing_features(options.get("isa", "auto"))
    if missing:
        return {"skipped": f"this CPU lacks {', '.join(missing)} (built for isa={options['isa']})"}
    return kernel_profile.time_calls(lib_path, feed)


#: CPU flags (/proc/cpuinfo names) each isa's code may execute
ISA_FLAGS = {"avx2": ("avx2", "fma"), "avx512": ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq"),
             "vnni": ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni")}


def missing_features(isa: str) -> list[str]:
    """The flags ``isa``'s code needs that this machine's CPU does not report (LLVM's cpuid view for VNNI too)."""
    if isa not in ISA_FLAGS:
        return []
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = next((set(line.split(":", 1)[1].split()) for line in fh if line.startswith("flags")), set())
    except OSError:
        return []
    missing = [f for f in ISA_FLAGS[isa] if f not in flags]
    if isa == "vnni" and not missing:
        from compress_graph.targets.isa.x86_vnni import host_has_vnni

        missing = [] if host_has_vnni() else ["avx512_vnni"]
    return missing
