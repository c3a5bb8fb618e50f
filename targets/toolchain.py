"""Cross compilers and ELF checks: what turns TVM's object code into a library the board can load."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

from compress_graph.ir.errors import TargetError

SETUP_HINT = "run .ci/setup_arm.sh (Debian packages) to install it"
# ``-s``: the packed-imports C file (CUDA builds) is compiled from a temp path that would land in .symtab as an
# STT_FILE symbol; stripping the static symbol table keeps the library byte-identical across build folders.
# TVM resolves its entry points through the dynamic symbol table, which ``-s`` keeps.
_REPRODUCIBLE = ["-s"]
_MACHINES = {3: "x86", 40: "ARM", 62: "x86-64", 183: "AArch64", 243: "RISC-V"}


def cross_compiler(compiler: str, *, keep_symbols: bool = False):
    """TVM ``fcompile`` linking with ``compiler``; flags keep the library reproducible (no build-path leaks).
    ``keep_symbols``: keep the static symbol table (every kernel's functions named, for profilers), at the price
    of that reproducibility."""
    if shutil.which(compiler) is None:
        raise TargetError(f"cross compiler '{compiler}' not found; {SETUP_HINT}")
    from tvm.support import cc

    return cc.cross_compiler(compiler, options=[] if keep_symbols else _REPRODUCIBLE)


def host_compiler(*, keep_symbols: bool = False):
    """The host's fcompile with the same reproducibility flags as the cross compilers (``keep_symbols``: as
    :func:`cross_compiler`)."""
    from tvm.support import cc

    for name in ("g++", "c++", "clang++"):
        if shutil.which(name):
            return cc.cross_compiler(name, options=[] if keep_symbols else _REPRODUCIBLE)
    raise TargetError("no C++ compiler (g++) found to link the host library")


def elf_machine(path: Path) -> str:
    """ELF ``e_machine`` of ``path`` as readelf names it ('AArch64', 'ARM', 'x86-64'); '' when not an ELF file."""
    head = Path(path).read_bytes()[:20]
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return ""
    endian = "<" if head[5] == 1 else ">"
    (machine,) = struct.unpack(endian + "H", head[18:20])
    return _MACHINES.get(machine, f"e_machine={machine}")


def elf_is_32bit(path: Path) -> bool:
    return Path(path).read_bytes()[4] == 1
