"""The `compress-graph` command: argument handling, output folder and exit codes only; no logic of its own.

Exit codes: 0 success, 1 internal error (a bug; a reproducer is saved), 2 usage error, 3 invalid or unsupported
model, 4 verification/accuracy budget exceeded (outputs still written), 5 target build/tune failure, 6 --timeout or
--pass-timeout exceeded (nothing written).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import click
from compress_graph.ir.errors import CompressGraphError, TargetError, TimeoutExceeded, UsageError, VerificationError
from compress_graph.passes.report import fmt_count, format_table

OUR_OUTPUTS = {"model.onnx", "model.onnx.data", "report.json", "report.html", "reproducer", "ir"}


# --------------------------------------------------------------------------------------------- helpers
def _echo(msg: str, quiet: bool = False) -> None:
    if not quiet:
        click.echo(msg, err=True)


def _progress_hook(quiet: bool):
    def hook(iterable, desc, total):
        if quiet:
            return iterable
        return _ProgressIter(iterable, desc, total)

    return hook


class _ProgressIter:
    """A progress bar on stderr (redrawn on a terminal, a few lines otherwise)."""

    def __init__(self, iterable, desc, total):
        self.iterable = iterable
        self.desc = desc
        self.total = total

    def __iter__(self):
        with click.progressbar(self.iterable, length=self.total, label=f"  {self.desc}", file=sys.stderr,
                               show_pos=True) as bar:
            yield from bar


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    return True


def _clean_stale(out: Path) -> None:
    """Remove what a killed earlier run left beside ``out`` (``.OUT.tmp-PID-*`` folders of dead processes); if it
    died between moving the previous output aside and moving the new one in, put the previous output back."""
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(tmp|old)-(\d+)(-.*)?$")
    try:
        entries = sorted(out.parent.iterdir(), key=lambda e: e.name)
    except OSError:
        return
    for e in entries:
        m = pattern.match(e.name)
        if not m or not e.is_dir() or _pid_alive(int(m.group(2))):
            continue
        if m.group(1) == "old" and not out.exists():
            os.replace(e, out)
        else:
            shutil.rmtree(e, ignore_errors=True)


def _rename_exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0


def _commit_output_dir(tmp: Path, out: Path) -> None:
    """Move the finished temp folder into place; an existing output folder is replaced only if it holds only our
    outputs (never a user's other files). The swap is one atomic exchange where Linux offers it, so a kill at any
    moment leaves the previous output or the new one."""
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"output path '{out}' exists and is not a folder")
        entries = list(out.iterdir())
        foreign = [e.name for e in entries if e.name not in OUR_OUTPUTS and not (e / "model.json").exists()]
        if foreign:
            raise UsageError(f"output folder '{out}' holds other files ({', '.join(sorted(foreign)[:3])}); "
                             "use a new or empty folder")
        if _rename_exchange(tmp, out):
            shutil.rmtree(tmp, ignore_errors=True)  # now holds the previous output
            return
        backup = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, backup)
        os.replace(tmp, out)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _load_config(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise UsageError("--config needs Python >= 3.11 (tomllib) or the tomli package") from None
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise UsageError(f"config file '{path}' not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file '{path}': {exc}") from None
    return {k.replace("-", "_"): v for k, v in data.items()}


# --------------------------------------------------------------------------------------------- click
class DefaultGroup(click.Group):
    """`compress-graph MODEL ...` runs the `run` command; `compress-graph passes|inspect` are subcommands."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="compress-graph")
def cli() -> None:
    """Compress ONNX vision models and compile them for edge devices.

    \b
      compress-graph model.onnx --passes fold-bn,prune,quant --target arm -o out/
      compress-graph passes          # list passes and their options
      compress-graph inspect MODEL   # params / MACs / bytes
      compress-graph report OUT/     # OUT/report.html from OUT/report.json
    """


@cli.command("run")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--passes", "pipeline", help="Pipeline text, e.g. 'fold-bn,prune{ratio=0.3},quant'.")
@click.option("-o", "--output", "output", type=click.Path(file_okay=False), help="Output folder.")
@click.option("--target", help="Compile for a target: arm, armv7, jetson, mali, adreno, host (options: arm{cpu=...}).")
@click.option("--calib", type=click.Path(), help="Calibration/sample data: .npz keyed by input name, or a .npy folder.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=DIMS",
              help="Shape a dynamic input is analysed and compiled at, e.g. x=1,3,224,224 (repeatable; default: the "
                   "--calib data's, batch 1 for a dynamic batch). The written model keeps its dynamic dims.")
@click.option("--metric", help="Task metric scored on --eval data: top1, top5, file.py:fn, module:fn or an entry point "
              "of compress_graph.metrics; fn(outputs, labels) -> score, higher is better.")
@click.option("--eval", "eval_data", type=click.Path(), help="Labeled evaluation data for --metric: an .npz with the "
              "model's inputs by name and the label arrays under other keys (keep it apart from --calib).")
@click.option("--max-drop", type=float, help="Largest allowed drop of --metric (its units; built-ins are percent): "
              "passes back off (prune/lowrank cut less, quant keeps layers float) until it holds; exit 4 if not.")
@click.option("--plugin", "plugins", multiple=True, help="Load passes from path/to/file.py or module:Class.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML file with these options.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Compare each pass's output with the original model in onnxruntime.")
@click.option("--min-cosine", type=float, help="Fail (exit 4) when output cosine similarity drops below this.")
@click.option("--max-abs-error", type=float, help="Fail (exit 4) when the max abs output error exceeds this.")
@click.option("--dump-ir", type=click.Path(file_okay=False), help="Write the model after every pass here.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for sample inputs and randomized passes.")
@click.option("--tune", "tune_trials", type=int, default=0, show_default=True, help="MetaSchedule trials (0: none).")
@click.option("--tuning-db", type=click.Path(file_okay=False), help="Tuning records folder to reuse / extend.")
@click.option("--rpc", help="Tune/verify on a board through a TVM RPC tracker: host:port:key.")
@click.option("--verify-target/--no-verify-target", default=False, help="Run the compiled library and compare.")
@click.option("--profile", "profile", is_flag=True,
              help="Measure each kernel of the --target library into report.json target.profile and the HTML "
                   "report: host: TVM's time_evaluator on every kernel call of one inference (calls, "
                   "microseconds); arm{symbols=keep}: executed aarch64 instructions per kernel under qemu; other "
                   "targets record why there is no number. Off: the build costs what it did.")
@click.option("--time-budget", type=float, help="Tuning time budget in seconds.")
@click.option("--int8/--no-int8", default=True, show_default=True, help="Lower QDQ models to integer kernels.")
@click.option("--timeout", type=float, help="Give up (exit 6, nothing written) after this many seconds.")
@click.option("--pass-timeout", type=float, help="Give up (exit 6) when one pass runs longer than this.")
@click.option("--html", is_flag=True, help="Also write OUTPUT/report.html (tables and charts, one offline file).")
@click.option("-q", "--quiet", is_flag=True, help="No progress or table on stderr.")
@click.pass_context
def run_cmd(ctx, model, pipeline, output, target, calib, input_shapes, metric, eval_data, max_drop, plugins,
            config_file, verify, min_cosine, max_abs_error,
            dump_ir, seed, tune_trials, tuning_db, rpc, verify_target, profile, time_budget, int8, timeout,
            pass_timeout, html, quiet):
    """Compress MODEL with a pipeline of passes (and compile it with --target); write OUTPUT/model.onnx,
    OUTPUT/report.json (and OUTPUT/<target>/)."""
    config = _load_config(config_file)
    params = dict(ctx.params)
    # config keys are the long option names (`passes`, `tune`, `tuning-db`, `plugin` or `plugins`, ...)
    names: dict[str, str] = {}
    for param in ctx.command.params:
        if param.name in ("config_file", "model"):
            continue
        names[param.name] = param.name
        for opt in getattr(param, "opts", []) + getattr(param, "secondary_opts", []):
            if opt.startswith("--") and not opt.startswith("--no-"):
                names[opt[2:].replace("-", "_")] = param.name
    for key, value in config.items():
        if key not in names:
            raise UsageError(f"config file '{config_file}': unknown option '{key}' "
                             f"(options: {', '.join(sorted(k for k in names if k == names[k] or '_' not in k))})")
        name = names[key]
        if ctx.get_parameter_source(name) in (click.core.ParameterSource.DEFAULT, None):
            params[name] = tuple(value) if name == "plugins" and isinstance(value, list) else value
    with _run_deadline(params["timeout"]):
        _run(params)


_EXPIRED: list[float] = []


@contextlib.contextmanager
def _run_deadline(seconds: float | None):
    """Whole-run time limit: SIGALRM raises TimeoutExceeded wherever the run is; the temp output is removed."""
    if not seconds:
        yield
        return
    if seconds <= 0:
        raise UsageError("--timeout must be positive")
    import compress_graph.ir.io  # noqa: F401  (import before arming: an alarm inside an import breaks the module)
    import compress_graph.passes  # noqa: F401

    def expire(signum, frame):
        _EXPIRED.append(seconds)
        raise TimeoutExceeded(f"run exceeded --timeout {seconds:g}s; no output written")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _run(o: dict[str, Any]) -> None:
    from compress_graph.ir import io
    from compress_graph.passes import load_plugin, parse_pipeline, run_pipeline

    quiet = o["quiet"]
    if not o["output"]:
        raise UsageError("missing -o/--output folder")
    if o["pipeline"] is None:
        raise UsageError("missing --passes (use '' for none)")
    for spec in o["plugins"] or ():
        load_plugin(spec)
    passes = parse_pipeline(o["pipeline"])  # usage errors before any work
    if o.get("profile") and not o["target"]:
        raise UsageError("--profile measures the kernels of a compiled library: give --target host (or arm)")
    _check_accuracy_options(o)
    prefs: dict[str, Any] = {}
    if o["target"]:
        from compress_graph.targets import onnx_passes, preferences, require_tvm

        require_tvm()
        prefs = preferences(o["target"])

        # the ONNX-side passes the target wants (constant/shape folding...) run last, so they see the final graph
        have = {p.name for p in passes}
        passes += parse_pipeline(",".join(n for n in onnx_passes(o["target"]) if n not in have))
    _echo(f"loading {o['model']}", quiet)
    model = io.load(o["model"])
    given_shapes = _input_shapes(model, o.get("input_shapes"))
    accuracy = _accuracy(model, o, quiet)
    out = Path(o["output"])
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    tmp.chmod(0o777 & ~io.current_umask())  # mkdtemp makes 0700: the output folder gets what mkdir would give it
    # scratch files of this run and of its workers (TVM's builders write to the temp dir) live inside the temp
    # output folder, so a killed run leaves nothing elsewhere and the next run clears it (_clean_stale)
    work = tmp / ".work"
    work.mkdir()
    saved_env, saved_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = str(work)
    tempfile.tempdir = str(work)
    try:
        _echo(f"running {len(passes)} pass(es): {o['pipeline'] or '(none)'}", quiet)
        result, report = run_pipeline(
            model, passes, calib=o["calib"], verify=o["verify"], seed=o["seed"], dump_ir=o["dump_ir"],
            reproducer_dir=out.parent / f"{out.name}.reproducer", progress_hook=_progress_hook(quiet),
            pass_timeout=o["pass_timeout"], preferences=prefs, input_shapes=given_shapes,
            shapes_needed_by=f"--target {o['target']}" if o["target"] else None, accuracy=accuracy,
        )
        io.save(result, tmp / "model.onnx")
        failure = _check_budget(report, o["min_cosine"], o["max_abs_error"]) or _check_max_drop(report)
        report["status"] = "budget_exceeded" if failure else "ok"
        if o["target"]:
            try:
                with _native_stderr_silenced(quiet):  # TVM's C++ warnings write to fd 2 directly
                    report["target"] = _build_target(result, o, tmp, quiet, report.get("input_shapes"))
            except TargetError as exc:
                if exc.details:
                    where = _save_target_failure(result, o, out.parent / f"{out.name}.reproducer", exc)
                    raise TargetError(f"{exc} (details: {where})") from None
                raise
            check = report["target"].get("verification", {})
            if check.get("status") == "failed" and not failure:
                failure = _mismatch_line(o["target"], check, out / "report.json")
                report["status"] = "target_mismatch"
        report["input_model"] = str(Path(o["model"]).resolve())
        text = json.dumps(report, indent=2, sort_keys=False, default=str) + "\n"
        # paths recorded while building point into the temp folder; the report names the final one
        text = text.replace(json.dumps(str(tmp))[1:-1], json.dumps(str(out))[1:-1])
        (tmp / "report.json").write_text(text)
        if o.get("html"):
            from compress_graph.report_html import write_html_report

            write_html_report(tmp, model_path=o["model"])
        shutil.rmtree(work, ignore_errors=True)
        _commit_output_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        tempfile.tempdir = saved_tempdir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
    if not quiet:
        click.echo(format_table(report), err=True)
        for w in report.get("warnings", []):
            click.echo(f"warning: {w}", err=True)
        if "target" in report:
            t = report["target"]
            check = t.get("verification", {})
            line = f"{t.get('target', o['target'])}: {str(t.get('library', '')).replace(str(tmp), str(out))}"
            if check.get("status") not in (None, "not requested"):
                line += f" - verification {check.get('status')}"
                if "max_abs_err" in check:
                    by = ", within int8 rounding noise" if check.get("passed_by") == "rounding noise" else ""
                    line += f" (max|d|={check['max_abs_err']:.3g}, {check.get('method', '')}{by})"
            click.echo(line, err=True)
            prof = t.get("profile") or {}
            if prof.get("kernels"):
                top = prof["kernels"][0]
                name = top["name"] if len(top["name"]) <= 64 else top["name"][:30] + "..." + top["name"][-31:]
                amount = (f"{prof['kernels_instructions'] / 1e6:.3g} M instructions (qemu)"
                          if prof.get("unit") == "instructions" else f"{prof['kernels_us'] / 1e3:.3g} ms")
                click.echo(f"profile: {prof['kernel_count']} kernels, {amount} per inference; heaviest {name} "
                           f"({top['share']:.0%})", err=True)
            elif prof:
                click.echo(f"profile: {prof.get('status')} ({prof.get('reason')})", err=True)
        files = [out / "model.onnx", out / "report.json"] + ([out / "report.html"] if o.get("html") else [])
        click.echo(f"wrote {', '.join(map(str, files[:-1]))} and {files[-1]}", err=True)
    if failure:
        raise VerificationError(failure)


@contextlib.contextmanager
def _native_stderr_silenced(active: bool):
    """With -q: file descriptor 2 points to /dev/null meanwhile, so native libraries (TVM's C++ logging) stay quiet.
    Errors still reach the user: they travel as exceptions and are printed after the descriptor is restored."""
    if not active:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _mismatch_line(target: str, check: dict, report_path: Path) -> str:
    """One readable line for a failed on-target comparison (the details are in the report)."""
    per_output = check.get("per_output_max_abs_err") or {}
    atols = check.get("per_output_atol") or {}
    worst = max(per_output, key=lambda k: per_output[k] / atols.get(k, 1.0)) if per_output else None
    where = f" on output '{worst}'" if worst is not None else ""
    err = per_output[worst] if worst is not None else check.get("max_abs_err", float("nan"))
    return (f"the {target} library does not match the model's onnxruntime reference under "
            f"{check.get('method', 'its runner')}: max|d|={err:.3g}{where} "
            f"(allowed {atols.get(worst, check.get('atol', 0)):.3g} + {check.get('rtol', 0):g}*|ref|); "
            f"details in {report_path}")


def _check_budget(report: dict, min_cosine: float | None, max_abs: float | None) -> str | None:
    if min_cosine is None and max_abs is None:
        return None
    verified = [r for r in report["passes"] if r.get("verify", {}).get("worst")]
    if not verified:
        return None
    worst = verified[-1]["verify"]["worst"]
    if min_cosine is not None and worst.get("cosine", 1.0) < min_cosine:
        return f"output cosine similarity {worst['cosine']:.6f} is below --min-cosine {min_cosine}"
    if max_abs is not None and worst.get("max_abs", 0.0) > max_abs:
        return f"max abs output error {worst['max_abs']:.6g} exceeds --max-abs-error {max_abs}"
    return None


def _save_target_failure(model, o: dict[str, Any], folder: Path, exc) -> Path:
    """A target that failed with a long compiler log: the log, the model handed to the target and how to replay,
    in the reproducer folder beside the output (the output folder itself is not written)."""
    from compress_graph.ir import io

    folder.mkdir(parents=True, exist_ok=True)
    io.save(model, folder / "input.onnx")
    (folder / "target.log").write_text(exc.details)
    shapes = " ".join(f"--input-shape {s}" for s in o.get("input_shapes") or ())
    info = {"target": o["target"], "error": str(exc), "log": str(folder / "target.log"),
            "replay": f"compress-graph {folder / 'input.onnx'} --passes '' --target '{o['target']}' "
                      f"{shapes + ' ' if shapes else ''}-o OUT"}
    (folder / "reproducer.json").write_text(json.dumps(info, indent=2) + "\n")
    return folder / "target.log"


def _check_accuracy_options(o: dict[str, Any]) -> None:
    if o.get("max_drop") is not None and not o.get("metric"):
        raise UsageError("--max-drop needs --metric (and --eval data to score it on)")
    if o.get("max_drop") is not None and o["max_drop"] < 0:
        raise UsageError(f"--max-drop must be >= 0; got {o['max_drop']}")
    if o.get("metric") and not o.get("eval_data"):
        raise UsageError("--metric needs --eval: labeled evaluation data (.npz: the model's inputs and labels)")
    if o.get("eval_data") and not o.get("metric"):
        raise UsageError("--eval needs --metric (top1, top5, file.py:fn, module:fn)")


def _accuracy(model, o: dict[str, Any], quiet: bool):
    """The --metric / --max-drop budget, scored once on the original model (None without --metric)."""
    if not o.get("metric"):
        return None
    from compress_graph.passes.metric import AccuracyBudget, Evaluator, load_metric

    evaluator = Evaluator(load_metric(o["metric"]), o["eval_data"], model)
    budget = AccuracyBudget(evaluator, model, o.get("max_drop"))
    _echo(f"{budget.name} of the original model on {evaluator.data.count} evaluation samples: {budget.baseline:.4g}",
          quiet)
    return budget


def _input_shapes(model, texts) -> dict[str, list[int]]:
    from compress_graph.ir.shapes import parse_input_shapes
    from compress_graph.passes.data import input_specs

    try:
        return parse_input_shapes(list(texts or ()), [n for n, _, _ in input_specs(model)])
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _check_max_drop(report: dict) -> str | None:
    acc = report.get("accuracy")
    if not acc or acc.get("met", True):
        return None
    return (f"{acc['metric']} dropped {acc['drop']:.4g} (from {acc['original']:.4g} to {acc['compressed']:.4g}), over "
            f"--max-drop {acc['max_drop']:g}")


def _build_target(model, o: dict[str, Any], out_tmp: Path, quiet: bool, shapes: dict | None = None) -> dict:
    from compress_graph.passes.data import CalibData
    from compress_graph.targets import build_for_target

    samples = None
    if o["verify_target"]:
        data = CalibData.from_path(o["calib"], model) if o["calib"] else CalibData.random(model, 2, o["seed"])
        samples = data.samples(2)
    _echo(f"building for target {o['target']}", quiet)
    import inspect

    extra = {"int8": o["int8"]} if "int8" in inspect.signature(build_for_target).parameters else {}
    return build_for_target(
        model.to_onnx(), o["target"], out_tmp, tune_trials=o["tune_trials"],
        tuning_db=Path(o["tuning_db"]) if o["tuning_db"] else None, rpc=o["rpc"],
        verify_target=o["verify_target"], sample_inputs=samples, time_budget_s=o["time_budget"],
        input_shapes=shapes or None, profile=bool(o.get("profile")),
        progress=None if quiet else (lambda s: _echo("  " + s)), **extra,
    )


@cli.command("report")
@click.argument("output", type=click.Path(file_okay=False))
@click.option("--model", "model_path", type=click.Path(dir_okay=False),
              help="The run's input model: adds the per-layer MACs before/after chart.")
def report_cmd(output, model_path):
    """Write OUTPUT/report.html from OUTPUT/report.json (a run's output folder): one self-contained page."""
    from compress_graph.report_html import write_html_report

    click.echo(f"wrote {write_html_report(output, model_path=model_path)}", err=True)


@cli.command("passes")
@click.option("--plugin", "plugins", multiple=True, help="Also load passes from these plugins.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def passes_cmd(plugins, as_json):
    """List registered passes and their options."""
    from compress_graph.passes import REGISTRY, load_plugin

    for spec in plugins:
        load_plugin(spec)
    items = [{"name": n, "description": c.description, "options": c.describe_options()} for n, c in REGISTRY.items()]
    if as_json:
        click.echo(json.dumps(items, indent=2, default=str))
        return
    for item in items:
        click.echo(f"{item['name']}: {item['description']}")
        for opt in item["options"]:
            choices = f" [{'|'.join(opt['choices'])}]" if opt["choices"] else ""
            click.echo(f"    {opt['name']} ({opt['type']}, default {opt['default']!r}){choices}: {opt['help']}")


@cli.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--top", type=int, default=10, show_default=True, help="Show the N nodes with the most MACs.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=DIMS",
              help="Count MACs with a dynamic input at this shape, e.g. x=1,3,224,224 (repeatable; default: batch 1 "
                   "for a dynamic batch).")
def inspect_cmd(model, top, as_json, input_shapes):
    """Print params, MACs and bytes of MODEL."""
    from collections import Counter

    from compress_graph.ir import io
    from compress_graph.ir.cost import model_cost
    from compress_graph.passes.data import resolve_input_shapes

    m = io.load(model)
    shapes = resolve_input_shapes(m, _input_shapes(m, input_shapes))
    cost = model_cost(m, shapes.shapes if shapes.dynamic else None)
    ops = Counter(n.op for n in m.graph.nodes)
    heavy = sorted((c for c in cost.per_node if c.macs > 0), key=lambda c: -c.macs)[:top]
    note = shapes.missing_message("MACs not counted") if shapes.unresolved else None
    if as_json:
        click.echo(json.dumps({"summary": cost.summary(), "ops": dict(sorted(ops.items())),
                               "top": [vars(c) for c in heavy],
                               **({"input_shapes": shapes.report()} if shapes.dynamic else {}),
                               **({"note": note} if note else {})}, indent=2))
        return
    s = cost.summary()
    click.echo(f"{model}: opset {m.opset}, {len(m.graph.nodes)} nodes")
    at = ""
    if shapes.dynamic and not shapes.unresolved:
        at = "  (at " + ", ".join(f"{k}={','.join(map(str, v['shape']))}" for k, v in shapes.report().items()) + ")"
    click.echo(f"  params {fmt_count(s['params'])}  MACs {fmt_count(s['macs'])}  bytes {fmt_count(s['bytes'])}{at}")
    if note:
        click.echo(f"  {note}")
    click.echo("  ops: " + ", ".join(f"{k} {v}" for k, v in sorted(ops.items())))
    if heavy:
        click.echo(f"  top {len(heavy)} by MACs:")
    for c in heavy:
        click.echo(f"    {c.name:40s} {c.op:18s} MACs {fmt_count(c.macs):>8s}  params {fmt_count(c.params):>8s}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: maps exceptions to one-line messages and exit codes (never a traceback for user errors)."""
    try:
        cli.main(args=argv, prog_name="compress-graph", standalone_mode=False)
        return 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        return 130
    except CompressGraphError as exc:
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        return 130
    except Exception as exc:  # a bug: one line, the traceback only on request
        if _EXPIRED:  # the alarm fired inside code that wrapped it (an import, a C extension callback)
            click.echo(f"error: run exceeded --timeout {_EXPIRED[-1]:g}s; no output written", err=True)
            return TimeoutExceeded.exit_code
        if os.environ.get("COMPRESS_GRAPH_DEBUG"):
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        click.echo(f"internal error: {type(exc).__name__}: {msg} (set COMPRESS_GRAPH_DEBUG=1 for a traceback)",
                   err=True)
        return 1


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
