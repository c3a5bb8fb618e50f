"""Run by the aarch64 sysroot's Python under qemu-aarch64 (bench/arm/insn.py): onnxruntime's CPU provider with its
default graph optimizations, 1 thread, RUNS times on the inputs of IN.npz; the marker syscalls bracket runs 2..RUNS
(the first is the warm-up). Outputs of the last run go to OUT.npz as out_0, out_1, ...

usage: ort_runner.py MODEL RUNS IN.npz OUT.npz
"""

import ctypes
import sys

import numpy as np
import onnxruntime as ort

GETPID_AARCH64, MARKER = 172, 0xC0FFEE
_syscall = ctypes.CDLL(None).syscall
_syscall.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_long]


def mark(region_id: int) -> None:
    _syscall(GETPID_AARCH64, MARKER, region_id)  # getpid ignores its arguments; the counting plugin reads them


def main() -> None:
    model, runs, inputs, outputs = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    data = np.load(inputs)
    feed = {i.name: data[i.name] for i in sess.get_inputs()}
    result = None
    for r in range(runs):
        result = sess.run(None, feed)
        if r == 0:
            mark(1000)
    mark(1001)
    np.savez(outputs, **{f"out_{k}": v for k, v in enumerate(result)})


if __name__ == "__main__":
    main()
