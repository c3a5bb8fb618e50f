"""Run by the host Python under ``qemu-x86_64 -cpu CPU`` (bench/x86/run.py): a compress-graph library (TVM's Relax
VM) or onnxruntime (CPU provider, default graph optimizations), 1 thread, RUNS times on the inputs of IN.npz; marker
syscalls bracket runs 2..RUNS (the first is the warm-up). Outputs of the last run go to OUT.npz as out_0, out_1, ...

usage: runner.py tvm|ort LIBRARY_OR_MODEL RUNS IN.npz OUT.npz
"""

import ctypes
import os
import sys

import numpy as np

GETPID_X86_64, MARKER = 39, 0xC0FFEE
_syscall = ctypes.CDLL(None).syscall
_syscall.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_long]


def mark(region_id: int) -> None:
    _syscall(GETPID_X86_64, MARKER, region_id)  # getpid ignores its arguments; the counting plugin reads them


def tvm_runner(path: str, data):
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(path), tvm.cpu())
    args = [tvm.runtime.tensor(data[k]) for k in sorted(data.files, key=lambda k: int(k[2:]))]

    def run():
        out = vm["main"](*args)
        outs = list(out) if isinstance(out, (list, tuple)) or type(out).__name__ == "Array" else [out]
        return [o.numpy() for o in outs]

    return run


def ort_runner(path: str, data):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    feed = {i.name: data[f"in{k}"] for k, i in enumerate(sess.get_inputs())}
    return lambda: sess.run(None, feed)


def main() -> None:
    kind, path, runs, inputs, outputs = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    data = np.load(inputs)
    run = tvm_runner(path, data) if kind == "tvm" else ort_runner(path, data)
    result = None
    for r in range(runs):
        result = run()
        if r == 0:
            mark(1000)
    mark(1001)
    with open("/proc/self/maps") as maps, open(outputs + ".maps", "w") as out:  # run.py attributes counts to kernels
        out.write(maps.read())
    np.savez(outputs, **{f"out_{k}": np.asarray(v) for k, v in enumerate(result)})


if __name__ == "__main__":
    main()
