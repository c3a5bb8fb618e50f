"""ONNX model -> deployable TVM library for one target: import, (tune), schedule, build, export, check, verify."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from compress_graph.ir.errors import TargetError
from compress_graph.targets import frontend, half, kernel_profile, schedule, toolchain, tuning
from compress_graph.targets.base import TargetSpec

LIB_NAME = "model.so"
ATOL = RTOL = 1e-4


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _first_line(exc: BaseException) -> str:
    return ((str(exc).strip().splitlines() or [type(exc).__name__])[-1])[:300]


def prepare(mod, target):
    """Float rewrites (targets/float_rewrites.py), then legalize and fuse: the form MetaSchedule tunes and its
    database keys on (workload hashes must match)."""
    import tvm
    from compress_graph.targets.float_rewrites import rewrite_float_ops
    from tvm import relax

    mod, _ = rewrite_float_ops(mod, target)
    with target:
        return tvm.transform.Sequential([
            relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings(),
            schedule.legalize_and_fuse()])(mod)


def apply_database(mod, target, db_dir: Path):
    import tvm
    from tvm import relax

    with target, tuning.database(db_dir), tvm.transform.PassContext(opt_level=3):
        return relax.transform.MetaScheduleApplyDatabase()(mod)


def _lower_int8(mod, target, onnx_model: onnx.ModelProto, device: str,
                requant: str = "fixed") -> tuple[dict[str, Any], list[float]]:
    """QDQ models on CPU targets: integer kernels via targets/int8 (issue 8). Returns its stats (with the new
    module under "module") and the comparison tolerance per graph output it implies: one quantization step of
    the output's 8-bit source, since integer requantization and onnxruntime's QDQ arithmetic may round a step
    differently (an output whose step is not known gets the largest known one)."""
    if device != "cpu":
        return {}, []
    from compress_graph.targets import int8 as int8_lowering

    if not int8_lowering.has_qdq(mod):
        return {}, []
    from compress_graph.targets.int8.build import prepare_for_tuning

    try:
        opts = dataclasses.replace(int8_lowering.options_for_target(target), requant=requant)
        lowered, stats = int8_lowering.lower_qdq(mod, target, opts)
        stats["requant"] = requant
        prepare_for_tuning(target)  # VNNI intrinsic fix, before MetaSchedule (sampling or tuning) sees the target
    except Exception as exc:
        raise TargetError(f"int8 lowering for {target.kind.name} failed: {_first_line(exc)}") from None
    scales = _output_scales(onnx_model)
    largest = max((s for s in scales if s == s), default=0.0)  # NaN: the output's step is not known
    return {**stats, "module": lowered}, [1.001 * (s if s == s else largest) for s in scales]


#: ops between an output and its 8-bit source that move no element by more than its input moved (not Softmax
#: behind a classifier: one step on every input of the classifier would allow any probability; such outputs keep
#: the float tolerance and are judged against the rounding noise)
_STEP_KEEPING_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Transpose",
                     "Sigmoid", "Relu", "Tanh", "Clip")


def _output_scales(model: onnx.ModelProto) -> list[float]:
    """Per graph output, how far one quantization step of its 8-bit source can move it (NaN: not known).

    A DequantizeLinear output: its scale. A float Gemm/MatMul/Conv of a dequantized input and constant
    weights (a classifier or detection head left in float): one step on every input element moves output j
    by at most ``scale * sum_i |W[i, j]|`` (for a conv: over output channel j's kernel). Shape-only ops
    (Reshape, Transpose, ...) and activations that never widen a difference (Sigmoid, Relu, Tanh, Clip) in
    between keep the bound.
    """
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}

    def source(name: str):
        node = producers.get(name)
        while node is not None and node.op_type in _STEP_KEEPING_OPS:
            node = producers.get(node.input[0])
        return node

    def dq_scale(node) -> float | None:
        if node is not None and node.op_type == "DequantizeLinear" and node.input[1] in inits:
            return float(np.abs(inits[node.input[1]]).max())
        return None

    def const_weight(name: str) -> np.ndarray | None:
        if name in inits:
            return inits[name].astype(np.float64)
        node = producers.get(name)
        if node is None or node.op_type != "DequantizeLinear" or not all(i in inits for i in node.input[:2]):
            return None
        q = inits[node.input[0]].astype(np.float64)
        scale = inits[node.input[1]].astype(np.float64)
        zp = inits[node.input[2]].astype(np.float64) if len(node.input) > 2 and node.input[2] in inits else 0.0
        if np.ndim(scale) == 1 and scale.size > 1:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % q.ndim
            shape = [1] * q.ndim
            shape[axis] = scale.size
            scale = scale.reshape(shape)
            zp = np.reshape(zp, shape) if np.ndim(zp) == 1 else zp
        return (q - zp) * scale

    scales = []
    for out in model.graph.output:
        node = source(out.name)
        step = dq_scale(node)
        if step is None and node is not None and node.op_type == "Conv":
            step_in, w = dq_scale(source(node.input[0])), const_weight(node.input[1])
            if step_in is not None and w is not None and w.ndim >= 3:  # (O, I/groups, k...): per output channel
                step = step_in * float(np.abs(w).reshape(w.shape[0], -1).sum(axis=1).max())
        if step is None and node is not None and node.op_type in ("Gemm", "MatMul"):
            step_in, w = dq_scale(source(node.input[0])), const_weight(node.input[1])
            attrs = {a.name: a for a in node.attribute}
            if step_in is not None and w is not None and w.ndim == 2 and "transA" not in attrs:
                if node.op_type == "Gemm" and attrs.get("transB") is not None and attrs["transB"].i:
                    w = w.T
                alpha = attrs["alpha"].f if "alpha" in attrs else 1.0
                step = step_in * abs(alpha) * float(np.abs(w).sum(axis=0).max())
        scales.append(float("nan") if step is None else step)
    return scales


def _device_code(executable, device: str) -> dict[str, Any]:
    """What device code the executable carries (GPU builds without a device module silently run on the host)."""
    from compress_graph.targets.cuda_aot import _walk

    mods = [m for m in _walk(executable.mod) if m.kind == device]
    if not mods:
        raise TargetError(f"the {device} build produced no {device} device code (kernels fell back to the host)")
    source = "\n".join(m.inspect_source() for m in mods)
    pattern = r"__global__\s+void\s+(?:__launch_bounds__\(\d+\)\s+)?(\w+)" if device == "cuda" else \
        r"__kernel\s+void\s+(\w+)"
    kernels = sorted(set(re.findall(pattern, source)))
    return {"kind": device, "kernels": len(kernels), "source": source}


def random_feeds(inputs: list[frontend.TensorSig], n: int = 2, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(n):
        feed = {}
        for s in inputs:
            if np.issubdtype(np.dtype(s.dtype), np.floating):
                feed[s.name] = rng.standard_normal(s.shape).astype(s.dtype)
            else:
                feed[s.name] = rng.integers(0, 10, s.shape).astype(s.dtype)
        feeds.append(feed)
    return feeds


#: how far the rounding-noise reference moves every quantization boundary (relative): float32 arithmetic, which the
#: reference runs in, and exact integer arithmetic, which the library runs, disagree about that much on where a value
#: lies, so an element this close to a boundary may round either way in a correct library
NOISE_NUDGE = 1e-6
#: a library whose error exceeds one step on some element passes if it stays within this factor of the rounding noise
#: (the noise is itself one sample of a random walk; a lowering bug is orders of magnitude beyond it)
NOISE_FACTOR = 2.0


def compare(onnx_model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], got: list[list[np.ndarray]],
            outputs: list[frontend.TensorSig], atol: float | list[float] = ATOL,
            rounding_noise: bool = False, rel_to_max: float = 0.0) -> dict[str, Any]:
    """Max abs/rel error against onnxruntime; passes when every element satisfies |a-b| <= atol + RTOL*|b|
    (``atol`` per output, or one for all; ``rel_to_max``: at least that fraction of the output's largest magnitude in
    the reference, a float16 library's tolerance).

    ``rounding_noise`` (int8 libraries): a one-step difference in an early layer legitimately grows through later
    ones (a 3x3 depthwise conv with large weights turns one input step into dozens of output steps), so deep
    models differ from the float32 QDQ reference by a few output steps although every op is within one step.
    An output over the element bound then passes if its rms error stays within NOISE_FACTOR of how far the
    reference itself moves when every quantization boundary is nudged by NOISE_NUDGE (both directions), and its
    max error within NOISE_FACTOR of that plus the element bound."""
    from compress_graph.ir import runtime

    sess = runtime.session(onnx_model)
    names = [o.name for o in outputs]
    atols = [max(ATOL, a) for a in atol] if isinstance(atol, list) else [max(ATOL, atol)] * len(outputs)
    diffs: dict[str, list[np.ndarray]] = {n: [] for n in names}
    refs = []
    worst_rel = 0.0
    for feed, values in zip(feeds, got):
        ref = sess.run(names, feed)
        if len(values) != len(ref):
            raise TargetError(f"the library returned {len(values)} outputs, the ONNX model {len(ref)}")
        refs.append(ref)
        if rel_to_max:
            atols = [max(tol, rel_to_max * float(np.abs(b).max(initial=0.0))) for tol, b in zip(atols, ref)]
        for name, a, b in zip(names, values, ref):
            diff = np.abs(np.asarray(a, dtype=np.float64).reshape(b.shape) - b)
            diffs[name].append(diff)
            worst_rel = max(worst_rel, float((diff / np.maximum(np.abs(b), 1e-12)).max(initial=0.0)))
    per_output = {n: max((float(d.max(initial=0.0)) for d in diffs[n]), default=0.0) for n in names}
    over = [n for k, (n, tol) in enumerate(zip(names, atols))
            if not all(np.all(d <= tol + RTOL * np.abs(r[k])) for d, r in zip(diffs[n], refs))]
    result: dict[str, Any] = {
        "status": "passed" if not over else "failed", "samples": len(feeds),
        "max_abs_err": max(per_output.values(), default=0.0), "max_rel_err": worst_rel,
        "per_output_max_abs_err": per_output, "atol": max(atols, default=ATOL),
        **({"per_output_atol": dict(zip(names, atols))} if len(set(atols)) > 1 else {}), "rtol": RTOL}
    if over and rounding_noise:
        noise = _rounding_noise(onnx_model, feeds, refs, names)
        judged = {}
        for n in over:
            err = np.concatenate([d.ravel() for d in diffs[n]])
            lib = {"max": float(err.max(initial=0.0)), "rms": float(np.sqrt(np.mean(err ** 2))) if err.size else 0.0}
            tol = atols[names.index(n)]
            within = (lib["max"] <= NOISE_FACTOR * noise[n]["max"] + tol
                      and lib["rms"] <= NOISE_FACTOR * noise[n]["rms"] + ATOL)
            judged[n] = {"library_max": lib["max"], "library_rms": lib["rms"], "noise_max": noise[n]["max"],
                         "noise_rms": noise[n]["rms"], "within": within}
        result["rounding_noise"] = {"nudge": NOISE_NUDGE, "factor": NOISE_FACTOR, "outputs": judged}
        if all(j["within"] for j in judged.values()):
            result["status"] = "passed"
            result["passed_by"] = "rounding noise"
    return result


def _rounding_noise(onnx_model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]],
                    refs: list[list[np.ndarray]], names: list[str]) -> dict[str, dict[str, float]]:
    """Per output, max and rms of how far the QDQ reference moves when every QuantizeLinear scale is scaled by
    1 +- NOISE_NUDGE (elements near a rounding boundary flip, as exact integer arithmetic may flip them)."""
    from compress_graph.ir import runtime
    from onnx import numpy_helper

    scale_names = {n.input[1] for n in onnx_model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 1}
    errs: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for sign in (1.0, -1.0):
        nudged = onnx.ModelProto()
        nudged.CopyFrom(onnx_model)
        for init in nudged.graph.initializer:
            if init.name in scale_names and init.data_type == onnx.TensorProto.FLOAT:
                value = numpy_helper.to_array(init).astype(np.float64) * (1.0 + sign * NOISE_NUDGE)
                init.CopyFrom(numpy_helper.from_array(value.astype(np.float32), init.name))
        sess = runtime.session(nudged)
        for feed, ref in zip(feeds, refs):
            for name, a, b in zip(names, sess.run(names, feed), ref):
                errs[name].append(np.abs(np.asarray(a, np.float64) - b).ravel())
    out = {}
    for name, parts in errs.items():
        err = np.concatenate(parts) if parts else np.zeros(1)
        out[name] = {"max": float(err.max(initial=0.0)), "rms": float(np.sqrt(np.mean(err ** 2)))}
    return out


def jsonable(value):
    """TVM containers (Map, Array, Target, IntImm, String) -> plain JSON values, e.g. for ``target.export()``."""
    import tvm

    if isinstance(value, tvm.target.Target):
        return jsonable(value.export())
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if hasattr(value, "items"):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ in ("Array", "List"):
        return [jsonable(v) for v in value]
    if hasattr(value, "value"):  # IntImm / FloatImm
        return value.value
    return str(value)


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("compress-graph", "apache-tvm", "apache-tvm-ffi", "onnx", "onnxruntime"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    try:
        import tvm

        out["llvm"] = str(tvm.support.libinfo().get("LLVM_VERSION", "unknown"))
    except Exception:  # noqa: BLE001 - informational
        pass
    return out


def vm_exec_mode(module, profile: bool) -> str:
    """How the library's Relax VM runs its ``main``: "compiled" (one native function calling the kernels: on
    cortex-a76 yolo_s's VM ran 434 K instructions interpreted and 243 K compiled, bench/arm/README.md) for CPU
    libraries, "bytecode" (the interpreter) for GPU ones, and where --profile times kernels through the
    interpreter's call hook (the target's ``PROFILE_VM_EXEC``)."""
    if profile and getattr(module, "PROFILE_VM_EXEC", None):
        return module.PROFILE_VM_EXEC
    return "compiled" if module.DEVICE == "cpu" else "bytecode"


def build(spec: TargetSpec, onnx_model: onnx.ModelProto, out_dir: Path, *, tune_trials: int = 0,
          tuning_db: Path | None = None, rpc: str | None = None, verify_target: bool = False,
          sample_inputs: list[dict[str, np.ndarray]] | None = None, time_budget_s: float | None = None,
          progress=None, int8: bool = True, input_shapes: dict[str, dict] | None = None,
          profile: bool = False) -> dict[str, Any]:
    """``input_shapes``: ``{input: {"shape": dims, "declared": ..., "from": ...}}`` for the model's dynamic inputs
    (the pipeline report's ``input_shapes``); the library is built for those shapes and model.json records them.
    ``profile``: time each kernel of the library on this machine (targets/kernel_profile.py; report only)."""
    import tvm
    from tvm import relax

    say = progress or (lambda _msg: None)
    module, options = spec.module, spec.options
    target = module.tvm_target(options)
    fcompile = module.cross_compiler(options) or toolchain.host_compiler()
    out = Path(out_dir) / spec.name
    out.mkdir(parents=True, exist_ok=True)
    if input_shapes:
        onnx_model = frontend.pin_shapes(onnx_model, {k: v["shape"] for k, v in input_shapes.items()})
    inputs, outputs = frontend.signature(onnx_model)
    timings: dict[str, float] = {}
    t0 = time.monotonic()

    half_report: dict[str, Any] = {}
    tvm_model = onnx_model
    if options.get("fp16") == "true":
        try:
            tvm_model, counts = half.to_half(onnx_model)
            half_report = {"applied": True, "converted": counts}
            say(f"{spec.text()}: float16 inside ({counts['initializers']} initializers converted)")
        except ValueError as exc:
            half_report = {"applied": False, "reason": str(exc)}
            say(f"{spec.text()}: fp16 not applied: {exc}")
    say(f"{spec.text()}: importing the ONNX model into TVM Relax")
    mod = frontend.to_relax(tvm_model)
    int8_report, int8_atol = _lower_int8(mod, target, onnx_model, module.DEVICE,
                                         options.get("requant", "fixed")) if int8 else ({}, [])
    if int8_report.get("converted"):
        mod = int8_report.pop("module")
        say(f"{spec.text()}: QDQ lowered to integer ops ({int8_report['converted']} converted, "
            f"{int8_report['float']} left in float)")
    int8_report.pop("module", None)
    try:
        mod = prepare(mod, target)
    except Exception as exc:
        raise TargetError(f"TVM could not lower the model for {spec.name}: {_first_line(exc)}") from None
    hand_schedules = bool(int8_report.get("converted")) and module.DEVICE == "cpu" \
        and options.get("schedule", "sample") != "none"
    if hand_schedules:
        from compress_graph.targets.int8.schedule import schedule_int8_kernels
    timings["import_s"] = round(time.monotonic() - t0, 2)

    db_dir = Path(tuning_db) if tuning_db else out / "tuning"
    tune_report: dict[str, Any] = {"trials_per_task": tune_trials, "db": str(db_dir)}
    if tune_trials > 0:
        compiler = getattr(module, "COMPILER", None)
        # the kernels with a hand-written int8 schedule are not tuned: tuning sees them scheduled
        tune_mod = schedule_int8_kernels(mod, target)[0] if hand_schedules else mod
        tune_report.update(tuning.tune(tune_mod, target, db_dir, tune_trials, rpc=rpc, compiler=compiler,
                                       time_budget_s=time_budget_s, progress=say))
    elif tuning_db is not None and not tuning.has_records(db_dir):
        raise TargetError(f"--tuning-db {db_dir}: no MetaSchedule records there (database_tuning_record.json)")
    timings["tune_s"] = round(max(0.0, time.monotonic() - t0 - timings["import_s"]), 2)

    t1 = time.monotonic()
    if tuning.has_records(db_dir):
        mod = apply_database(mod, target, db_dir)
        if tuning_db is not None and db_dir.resolve() != (out / "tuning").resolve():
            (out / "tuning").mkdir(exist_ok=True)
            for f in ("database_workload.json", "database_tuning_record.json"):
                shutil.copyfile(db_dir / f, out / "tuning" / f)
    kernels = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    tuned = sum(1 for f in kernels if schedule.is_scheduled(f))
    before_defaults = mod.clone()  # to fall back to, kernel by kernel, if a default schedule does not build
    hand: dict[str, Any] = {"scheduled": [], "failed": {}}
    fhand: dict[str, Any] = {"scheduled": [], "failed": {}}
    if hand_schedules:  # kernels without a tuning record
        mod, hand = schedule_int8_kernels(mod, target)
    sched_report: dict[str, Any] = {"kernels": len(kernels), "from_tuning_records": tuned}
    if hand["scheduled"] or hand["failed"]:
        sched_report.update(int8_hand_scheduled=len(hand["scheduled"]), int8_hand_failed=hand["failed"])
    if module.DEVICE == "cpu" and options.get("schedule", "sample") != "none":
        from compress_graph.targets.fp32_schedule import schedule_fp32_kernels

        mod, fhand = schedule_fp32_kernels(mod, target)
        if fhand["scheduled"] or fhand["failed"]:
            sched_report.update(fp32_hand_scheduled=len(fhand["scheduled"]), fp32_hand_failed=fhand["failed"],
                                **{k: fhand[k] for k in ("weights_prepacked", "weight_transforms_at_runtime")
                                   if k in fhand})
    if module.DEVICE == "cpu" and options.get("schedule", "sample") == "none":
        sched_report.update(default="none (unscheduled loop nests)")
    elif module.DEVICE == "cpu":
        stats = schedule.sample_default_schedules(mod, target)
        sched_report.update(default="metaschedule-sample (seeded, unmeasured)", sampled=stats["sampled"],
                            unscheduled=stats["left_unscheduled"])
    else:
        sched_report.update(default="dlight GPU rules (Matmul, GEMV, Reduction, GeneralReduction, Fallback)")
    say(f"{spec.text()}: building ({tuned}/{len(kernels)} kernels from tuning records)")
    exec_mode = vm_exec_mode(module, profile)
    sched_report["vm_exec_mode"] = exec_mode
    try:
        with tvm.transform.PassContext(opt_level=3):
            executable = relax.build(mod, target, exec_mode=exec_mode)
    except Exception as exc:
        # a sampled (or hand-written) schedule that passed MetaSchedule's checks can still fail TVM's lowering
        # (seen: "VectorizeLoop before LiftStorageAlloc" on an int8 conv for arm): such kernels go back to
        # their unscheduled loop nests and the build is retried once
        bad = schedule.unbuildable_kernels(mod, target)
        known = {gv.name_hint for gv in before_defaults.functions.keys()}
        if not bad or any(gv.name_hint not in known for gv in bad):  # e.g. a prepacked-weight kernel: no fallback
            raise TargetError(f"TVM build for {spec.name} failed: {_first_line(exc)}") from None
        for gv in bad:
            mod[gv] = before_defaults[before_defaults.get_global_var(gv.name_hint)]
        sched_report["schedules_dropped_unbuildable"] = sorted(gv.name_hint for gv in bad)
        say(f"{spec.text()}: {len(bad)} kernel schedule(s) did not build; those kernels stay unscheduled")
        try:
            with tvm.transform.PassContext(opt_level=3):
                executable = relax.build(mod, target, exec_mode=exec_mode)
        except Exception as exc2:
            raise TargetError(f"TVM build for {spec.name} failed: {_first_line(exc2)}") from None

    lib = out / LIB_NAME
    device_info: dict[str, Any] = {}
    pack = None
    if module.DEVICE != "cpu":
        code = _device_code(executable, module.DEVICE)
        ext = "cu" if module.DEVICE == "cuda" else "cl"
        (out / f"kernels.{ext}").write_text(code.pop("source"))
        device_info = code
        if module.DEVICE == "cuda":
            from compress_graph.targets import cuda_aot

            fmt = options.get("format", "cubin")
            pack = cuda_aot.aot_packer(options["arch"], fmt) if fmt != "source" else None
            device_info.update(format=fmt, arch=options["arch"], cuda_version=cuda_aot.cuda_version())
    tmp = lib.with_name(lib.name + ".tmp")
    workspace = out / ".build"
    try:
        shutil.rmtree(workspace, ignore_errors=True)
        workspace.mkdir()
        executable.mod.export_library(str(tmp), fcompile=fcompile, fpack_imports=pack, workspace_dir=str(workspace))
        tmp.replace(lib)
    except TargetError:
        raise
    except Exception as exc:
        raise TargetError(f"linking the {spec.name} library failed: {_first_line(exc)}") from None
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(workspace, ignore_errors=True)
    machine = toolchain.elf_machine(lib)
    if module.ELF_MACHINE and machine != module.ELF_MACHINE:
        raise TargetError(f"{lib} is a {machine or 'non-ELF'} file, expected an {module.ELF_MACHINE} ELF library")
    timings["build_s"] = round(time.monotonic() - t1, 2)

    verification: dict[str, Any] = {"status": "not requested"}
    if verify_target:
        feeds = sample_inputs or random_feeds(inputs)
        ordered = [[np.asarray(f[s.name], dtype=s.dtype) for s in inputs] for f in feeds]
        say(f"{spec.text()}: verifying the library against onnxruntime")
        t2 = time.monotonic()
        ran = module.verify(lib, ordered, options, rpc=rpc, workdir=out)
        if "skipped" in ran:
            verification = {"status": "skipped", "method": ran["method"], "reason": ran["skipped"]}
        else:
            verification = {"method": ran["method"],
                            **compare(onnx_model, feeds, ran["outputs"], outputs, atol=int8_atol or ATOL,
                                    rounding_noise=bool(int8_report.get("converted")),
                                    rel_to_max=half.FP16_REL if half_report.get("applied") else 0.0)}
        timings["verify_s"] = round(time.monotonic() - t2, 2)

    kernel_schedules = kernel_profile.kernel_sources(before_defaults, hand["scheduled"], fhand["scheduled"],
                                                     sched_report)
    profile_report = None
    if profile:
        say(f"{spec.text()}: measuring each kernel (--profile)")
        t3 = time.monotonic()
        feed = (sample_inputs or random_feeds(inputs, n=1))[0]
        profile_report = kernel_profile.measure(module, lib, [np.asarray(feed[s.name], dtype=s.dtype) for s in inputs],
                                                options, kernel_schedules)
        timings["profile_s"] = round(time.monotonic() - t3, 2)

    target_json = jsonable(target)
    meta = {
        "format": "compress-graph tvm artifact v1",
        "target": spec.name, "target_text": spec.text(), "options": options, "tvm_target": target_json,
        "library": LIB_NAME, "library_sha256": sha256(lib), "elf_machine": machine,
        "source_onnx_sha256": hashlib.sha256(onnx_model.SerializeToString(deterministic=True)).hexdigest(),
        "inputs": [s.as_json() for s in inputs], "outputs": [s.as_json() for s in outputs],
        **({"dynamic_inputs": input_shapes} if input_shapes else {}),
        "entry": "main", "device": module.DEVICE, "device_code": device_info,
        **({"fp16": half_report} if half_report else {}),
        "schedule": sched_report, "tuning_records": "tuning/" if tuning.has_records(out / "tuning") else None,
        "versions": versions(),
    }
    (out / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n")
    return {
        "target": spec.name, "target_text": spec.text(), "out_dir": str(out), "library": str(lib),
        "model_json": str(out / "model.json"), "library_sha256": meta["library_sha256"], "elf_machine": machine,
        "tvm_target": target_json, "schedule": sched_report, "tuning": tune_report, "device_code": device_info,
        "verification": verification, "timings": timings, **({"int8": int8_report} if int8_report else {}),
        **({"fp16": half_report} if half_report else {}),
        "kernel_schedules": kernel_schedules, **({"profile": profile_report} if profile_report else {}),
    }
