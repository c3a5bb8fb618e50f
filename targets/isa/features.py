"""What a TVM llvm target's CPU can do: ``+feature`` / ``-feature`` in its mattr, else LLVM's model of its mcpu."""

from __future__ import annotations

import functools

import tvm

X86 = ("x86_64", "i686", "i386")
AARCH64 = ("aarch64", "arm64")
_VNNI_CPUS = {  # where LLVM cannot be asked
    "znver4", "znver5", "cascadelake", "cooperlake", "icelake-client", "icelake-server", "tigerlake",
    "sapphirerapids", "emeraldrapids", "graniterapids", "graniterapids-d", "rocketlake", "diamondrapids",
}


def attr(target: tvm.target.Target, key: str):
    return target.attrs.get(key) if hasattr(target.attrs, "get") else None


def arch_is(target: tvm.target.Target, prefixes: tuple[str, ...], *, default: bool) -> bool:
    """An llvm target whose mtriple starts with one of ``prefixes`` (no mtriple: ``default``, the host)."""
    if str(target.kind.name) != "llvm":
        return False
    triple = str(attr(target, "mtriple") or "")
    return triple.startswith(prefixes) if triple else default


def has(target: tvm.target.Target, feature: str, native=None) -> bool | None:
    """``feature`` (LLVM's name, e.g. avx512vnni, dotprod) by mattr, then by mcpu; ``native()`` answers for
    mcpu=native; None when the target names neither (a caller's default applies)."""
    mattr = [str(a) for a in (attr(target, "mattr") or [])]
    if f"+{feature}" in mattr:
        return True
    if f"-{feature}" in mattr:
        return False
    mcpu = str(attr(target, "mcpu") or "")
    if mcpu == "native" and native is not None:
        return native()
    if not mcpu:
        return None
    return cpu_has_feature(mcpu, feature, str(attr(target, "mtriple") or ""))


@functools.cache
def cpu_has_feature(mcpu: str, feature: str, triple: str = "") -> bool:
    """Whether LLVM's model of CPU ``mcpu`` has ``feature``; a fixed list where LLVM cannot say."""
    try:
        from tvm.target import codegen

        spec = {"kind": "llvm", "mcpu": mcpu, **({"mtriple": triple} if triple else {})}
        return bool(codegen.llvm_cpu_has_features([feature], tvm.target.Target(spec)))
    except Exception:  # noqa: BLE001 - an LLVM without the query
        return feature == "avx512vnni" and mcpu in _VNNI_CPUS


@functools.cache
def host_has(feature: str, cpuinfo_flag: str) -> bool:
    """Whether this machine runs code using the x86 ``feature`` (LLVM's name; ``cpuinfo_flag``: /proc/cpuinfo's):
    LLVM's host CPU (from cpuid, so an emulated CPU such as ``qemu-x86_64 -cpu Haswell`` counts as what it
    emulates) must have it, and /proc/cpuinfo must not deny it (a VM may mask features of the CPU model it
    reports)."""
    try:
        from tvm.target import codegen

        cpu = str(codegen.llvm_get_system_cpu())
    except Exception:  # noqa: BLE001
        cpu = ""
    if cpu and cpu != "generic" and not cpu_has_feature(cpu, feature):
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return any(line.startswith("flags") and cpuinfo_flag in line.split() for line in fh)
    except OSError:
        return bool(cpu) and cpu != "generic"
