"""The HTML report (`--html`, `compress-graph report OUT/`): its sections, that it is one offline file, that its
charts are drawn, that its numbers are report.json's, and that it renders in headless Chromium."""

import base64
import io
import json
import math
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest
from cg_testutil import MODELS
from compress_graph.cli import main
from PIL import Image

RESNET = str(MODELS / "resnet_s.onnx")
PIPELINE = "fold-bn,prune{macs=0.7},quant"
SECTIONS = ["summary", "cost", "layers", "passes", "target", "tuning"]
AFTER_RGB = (0xE8, 0x59, 0x0C)  # report_html.AFTER_COLOR: the "after" bars; nothing else on the page uses it


def cli(*args):
    code = "import sys; from compress_graph.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300)


class Page(HTMLParser):
    """What the tests read from a page: h2 sections (id -> text below them), numeric cells, images, references
    (src/href) and tag names."""

    def __init__(self, text: str):
        super().__init__()
        self.sections: dict[str, list[str]] = {}
        self.cells: dict[str, tuple[str, list[str]]] = {}  # data-key -> (data-value, text pieces)
        self.images: list[str] = []
        self.tags: set[str] = set()
        self.refs: list[str] = []
        self._section: str | None = None
        self._cell: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        self.refs += [v or "" for k, v in attrs if k in ("src", "href", "srcset", "action", "poster", "data")]
        if tag == "h2":
            self._section = a.get("id")
            self.sections[self._section] = []
        if tag == "td" and "data-key" in a:
            self._cell = a["data-key"]
            self.cells[self._cell] = (a["data-value"], [])
        if tag == "img":
            self.images.append(a["src"])

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None

    def handle_data(self, data):
        if self._section is not None:
            self.sections[self._section].append(data)
        if self._cell is not None:
            self.cells[self._cell][1].append(data)

    def text(self, section: str) -> str:
        return " ".join(self.sections[section])


def lookup(report: dict, key: str):
    value = report
    for part in key.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def shown_number(text: str) -> float:
    return float(text.replace(",", "").strip())


def png(src: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:60]
    return Image.open(io.BytesIO(base64.b64decode(src[len(prefix):]))).convert("RGB")


def drawn(image: Image.Image) -> tuple[int, float]:
    """(distinct colours, share of pixels that are not white)."""
    pixels = np.asarray(image).reshape(-1, 3)
    return len(np.unique(pixels, axis=0)), float((pixels != 255).any(axis=1).mean())


@pytest.fixture(scope="module")
def run_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("html") / "out"
    r = cli(RESNET, "--passes", PIPELINE, "-o", out, "--html")
    assert r.returncode == 0, r.stderr
    assert "report.html" in r.stderr.splitlines()[-1]
    return out


def test_run_html_has_sections_is_offline_and_charts_are_drawn(run_out):
    text = (run_out / "report.html").read_text(encoding="utf-8")
    page = Page(text)
    assert list(page.sections) == SECTIONS
    assert PIPELINE in page.text("summary") and RESNET in page.text("summary")
    # absent data: the heading stays and says so
    assert "not recorded" in page.text("target") and "not recorded" in page.text("tuning")
    assert "not recorded (no --metric)" in page.text("summary")
    # one offline file: no script, no stylesheet or frame to fetch, no URL anywhere
    assert "http://" not in text and "https://" not in text and "url(" not in text
    assert not page.tags & {"script", "link", "iframe", "object", "embed"}
    assert page.refs and all(v.startswith(("data:image/png;base64,", "#")) for v in page.refs)
    # cost per pass, per layer, prune sensitivity (with the chosen cuts), channels kept per group, quant placement
    assert len(page.images) == 5
    for src in page.images:
        colours, ink = drawn(png(src))
        assert colours > 20 and ink > 0.02, (colours, ink)
    passes = page.text("passes")
    assert "Channels kept per prune group" in passes and "chosen cut" in passes
    assert "not recorded" not in passes  # every pass's numbers are there, the chosen cuts too


def cells_match_report(page: Page, report: dict, required: list[str]) -> int:
    """Every number cell of the page holds (data-value) and shows (text) the report.json value its data-key
    names; the ``required`` keys are among them. Returns how many cells were checked."""
    assert set(required) <= set(page.cells), sorted(set(required) - set(page.cells))
    checked = 0
    for key, (value, pieces) in page.cells.items():
        if key.startswith("layers."):
            continue  # counted from the model files
        recorded = lookup(report, key)
        assert json.loads(value) == recorded, key
        shown = shown_number("".join(pieces))
        if isinstance(recorded, int):
            assert shown == recorded, (key, pieces)
        else:  # floats are shown to 6 significant digits
            assert math.isclose(shown, recorded, rel_tol=5.1e-6, abs_tol=1e-12), (key, pieces)
        checked += 1
    return checked


def test_html_numbers_are_report_json_numbers(run_out):
    report = json.loads((run_out / "report.json").read_text())
    page = Page((run_out / "report.html").read_text(encoding="utf-8"))
    required = [f"{side}.{k}" for side in ("before", "after") for k in ("params", "macs", "bytes")]
    for i in range(len(report["passes"])):
        required += [f"passes.{i}.after.{k}" for k in ("params", "macs", "bytes")]
        required += [f"passes.{i}.time_s", f"passes.{i}.verify.worst.cosine", f"passes.{i}.verify.worst.max_abs"]
    prune = next(i for i, r in enumerate(report["passes"]) if r["name"] == "prune")
    cuts = report["passes"][prune]["stats"]["cuts"]
    required += [f"passes.{prune}.stats.cuts.{k}.{x}" for k in range(len(cuts)) for x in ("channels", "kept")]
    assert cells_match_report(page, report, required) > 40  # the pass stats are in too, not only the summary

    # per layer: the input model's own per-node MACs, and the pruned layers shrank
    from compress_graph.ir import io as cg_io
    from compress_graph.ir.cost import model_cost

    per_node = {c.name: c.macs for c in model_cost(cg_io.load(RESNET)).per_node}
    layers = {k[len("layers."):]: json.loads(v) for k, (v, _) in page.cells.items() if k.startswith("layers.")}
    befores = {k[:-len(".before")]: v for k, v in layers.items() if k.endswith(".before")}
    assert len(befores) >= 10 and all(per_node[name] == v for name, v in befores.items())
    assert any(layers.get(f"{name}.after", v) < v for name, v in befores.items())


def test_report_command_rewrites_the_page_and_refuses_other_folders(run_out, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run_out, copy)
    (copy / "report.html").unlink()
    r = cli("report", copy, "--model", RESNET)
    assert r.returncode == 0, r.stderr
    # same report.json and model: the same page, byte for byte
    assert (copy / "report.html").read_bytes() == (run_out / "report.html").read_bytes()
    r = cli("report", copy)  # the run recorded its input model: the same page without --model
    assert r.returncode == 0, r.stderr
    assert (copy / "report.html").read_bytes() == (run_out / "report.html").read_bytes()
    data = json.loads((copy / "report.json").read_text())
    del data["input_model"]  # a report that does not say where its input was
    (copy / "report.json").write_text(json.dumps(data))
    r = cli("report", copy)
    assert r.returncode == 0, r.stderr
    page = Page((copy / "report.html").read_text(encoding="utf-8"))
    assert list(page.sections) == SECTIONS and "not recorded" in page.text("layers")
    assert len(page.images) == 4 and not [p for p in copy.iterdir() if p.name.startswith(".")]
    # a folder holding report.html is still ours: a new run replaces it (without --html: no stale page)
    r = cli(RESNET, "--passes", "fold-bn", "-o", copy, "-q")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in copy.iterdir()) == ["model.onnx", "report.json"]

    bad = tmp_path / "bad"
    bad.mkdir()
    cases = {"missing folder": tmp_path / "nope", "no report.json": bad}
    for name, body in (("not json", "{"), ("not a report", '{"pipeline": "x"}'), ("a list", "[1, 2]")):
        folder = tmp_path / name.replace(" ", "_")
        folder.mkdir()
        (folder / "report.json").write_text(body)
        cases[name] = folder
    capsys.readouterr()
    for name, folder in cases.items():
        assert main(["report", str(folder)]) == 2, name
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and str(folder) in lines[0], (name, err)
        assert not (folder / "report.html").exists()


def test_strings_are_escaped_and_absent_sections_say_so():
    from compress_graph.report_html import render_html

    evil = "<script>alert(1)</script>"
    report = {"pipeline": evil, "passes": [{"name": "x", "text": evil, "stats": {evil: evil}, "after": {}}],
              "before": {"params": 1, "macs": 2, "bytes": 3}, "after": {"params": 1, "macs": 2, "bytes": 3},
              "warnings": [evil], "status": evil}
    text = render_html(report)
    assert "<script" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    page = Page(text)
    assert list(page.sections) == SECTIONS
    for section in ("layers", "target", "tuning"):
        assert "not recorded" in page.text(section), section
    assert "not recorded" in page.text("cost")  # the pass has no cost: no chart made up
    assert page.images == []


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (Debian package 'chromium'; "
                    ".ci/setup_arm.sh installs it)")
def test_page_renders_in_headless_chromium(run_out, tmp_path):
    url = (run_out / "report.html").resolve().as_uri()
    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}"]
    env = {**os.environ, "HOME": str(tmp_path)}
    shot = tmp_path / "shot.png"
    r = subprocess.run(base + [f"--screenshot={shot}", "--window-size=1200,2000", url], capture_output=True,
                       text=True, timeout=180, env=env)
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 2000)
    colours, ink = drawn(image)
    assert colours > 100 and ink > 0.3, (colours, ink)  # text, tables, the page background and charts
    orange = int((np.abs(np.asarray(image).astype(int) - AFTER_RGB) <= 8).all(axis=2).sum())
    assert orange > 2000, orange  # the cost and per-layer charts' "after" bars are on screen: the PNGs decoded

    r = subprocess.run(base + ["--dump-dom", url], capture_output=True, text=True, timeout=180, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    dom = Page(r.stdout)
    assert list(dom.sections) == SECTIONS and len(dom.images) == 5


def test_target_section_shows_the_recorded_schedule():
    """The shape of a `--target host` report (fields as targets/build.py writes them), rendered in-process."""
    from compress_graph.report_html import render_html

    cost = {"params": 10, "macs": 20, "bytes": 30}
    target = {"target": "host", "target_text": "host", "library": "/o/host/model.so", "elf_machine": "x86-64",
              "tvm_target": {"kind": "llvm", "mcpu": "rocketlake"},
              "schedule": {"kernels": 17, "from_tuning_records": 2, "int8_hand_scheduled": 9, "int8_hand_failed": {},
                           "default": "metaschedule-sample (seeded, unmeasured)", "sampled": 6, "unscheduled": []},
              "tuning": {"trials_per_task": 8, "tasks": 3, "trials": 24, "failed_trials": 1, "seconds": 12.5},
              "verification": {"status": "passed", "max_abs_err": 0.0125, "method": "local"},
              "timings": {"import_s": 1.73, "tune_s": 12.6, "build_s": 1.72}}
    report = {"pipeline": "", "passes": [], "before": cost, "after": cost, "status": "ok", "target": target}
    page = Page(render_html(report))
    assert "verification: passed" in page.text("summary")
    for key in ("schedule.kernels", "schedule.from_tuning_records", "schedule.int8_hand_scheduled",
                "schedule.sampled", "verification.max_abs_err", "timings.build_s", "tuning.trials",
                "tuning.failed_trials"):
        value, pieces = page.cells[f"target.{key}"]
        assert json.loads(value) == lookup(target, key) and shown_number("".join(pieces)) == lookup(target, key)
    assert "not recorded (--profile: time per kernel on a --target host build" in page.text("target")
    assert "not recorded (this report keeps tuning totals only)" in page.text("tuning")  # a report before curves
    assert len(page.images) == 2  # cost per pass, kernels by schedule source
    colours, ink = drawn(png(page.images[1]))
    assert colours > 20 and ink > 0.02


def test_target_section_shows_the_fp16_record():
    """arm{fp16=true}: the report's `fp16` section (applied, what was converted; or why not) in the target part."""
    from compress_graph.report_html import render_html

    cost = {"params": 10, "macs": 20, "bytes": 30}
    for fp16 in ({"applied": True, "converted": {"initializers": 48, "constants": 0, "casts": 0}},
                 {"applied": False, "reason": "a quantized (QDQ) model: not converted"}):
        target = {"target": "arm", "target_text": "arm{cpu=cortex-a76,fp16=true}", "library": "/o/arm/model.so",
                  "schedule": {"kernels": 3}, "fp16": fp16, "timings": {"build_s": 1.0}}
        page = Page(render_html({"pipeline": "", "passes": [], "before": cost, "after": cost, "status": "ok",
                                 "target": target}))
        text = page.text("target")
        assert "float16 (fp16=true)" in text
        assert ("48" in text) if fp16["applied"] else ("QDQ" in text)


# --------------------------------------------------------------------------------------------- time per kernel, tuning
def _target_report(target: dict) -> dict:
    cost = {"params": 10, "macs": 20, "bytes": 30}
    return {"pipeline": "", "passes": [], "before": cost, "after": cost, "status": "ok", "target": target}


def test_kernel_times_and_tuning_curve_render_from_report_json():
    """A `--profile --tune` report's shape (fields as targets/kernel_profile.py and targets/tuning.py write them):
    the chart and table of time per kernel, the tuning curve and per-task table, every number report.json's."""
    from compress_graph.report_html import render_html

    sources = {"fused_conv2d_add_relu": "tuned (records)", "fused_matmul_add": "default (sampled)",
               "max_pool2d": "hand-scheduled fp32"}
    profile = {"status": "measured", "method": "TVM time_evaluator ...", "runs": 5, "run_us": 41.5, "kernels_us": 37.25,
               "kernel_count": 3, "untimed_calls": 9,
               "kernels": [{"name": "fused_conv2d_add_relu", "schedule": "tuned (records)", "calls": 2,
                            "total_us": 30.5, "mean_us": 15.25, "share": 0.8188},
                           {"name": "max_pool2d", "schedule": "hand-scheduled fp32", "calls": 1, "total_us": 5.5,
                            "mean_us": 5.5, "share": 0.1477},
                           {"name": "fused_matmul_add", "schedule": "default (sampled)", "calls": 1, "total_us": 1.25,
                            "mean_us": 1.25, "share": 0.0336}]}
    curve = {"tasks": [{"name": "fused_conv2d_add_relu", "weight": 2.0}, {"name": "fused_matmul_add", "weight": 1.0}],
             "points": [{"trials": 4, "task": 0, "batch_trials": 4, "best_us": 20.0, "model_us": None},
                        {"trials": 8, "task": 1, "batch_trials": 4, "best_us": 1.5, "model_us": 41.5},
                        {"trials": 12, "task": 0, "batch_trials": 4, "best_us": 15.125, "model_us": 31.75}]}
    target = {"target": "host", "target_text": "host", "kernel_schedules": sources, "profile": profile,
              "schedule": {"kernels": 3, "from_tuning_records": 1, "fp32_hand_scheduled": 1, "sampled": 1},
              "tuning": {"trials_per_task": 8, "tasks": 2, "trials": 12, "failed_trials": 0, "curve": curve}}
    report = _target_report(target)
    page = Page(render_html(report))
    required = [f"target.profile.kernels.{k}.{x}" for k in range(3) for x in ("calls", "total_us", "mean_us")]
    required += ["target.profile.run_us", "target.profile.kernels_us", "target.tuning.curve.points.2.model_us",
                 "target.tuning.curve.points.0.best_us", "target.tuning.curve.points.2.best_us",
                 "target.tuning.curve.points.1.best_us", "target.tuning.curve.tasks.0.weight"]
    assert cells_match_report(page, report, required) >= len(required)
    text = page.text("target").split("Time per kernel")[1].split("int8 lowering")[0]
    assert all(name in text for name in sources) and "81.9 %" in text and "not recorded" not in text
    assert "not recorded" not in page.text("tuning")
    assert len(page.images) == 4  # cost per pass, kernels by schedule source, time per kernel, tuning curve
    for src in page.images[2:]:
        colours, ink = drawn(png(src))
        assert colours > 20 and ink > 0.02, (colours, ink)

    # a target that cannot time its kernels here: the reason, and the kernel list with schedule sources
    target["profile"] = {"status": "not measured", "reason": "per-kernel time is not measured for arm: see bench/arm"}
    del target["tuning"]["curve"]
    page = Page(render_html(_target_report(target)))
    text = page.text("target")
    assert "not measured for arm: see bench/arm" in text and all(f"{n} {s}" in text for n, s in sources.items())
    assert len(page.images) == 2


def _kernel_rows_add_up(profile: dict) -> None:
    rows = profile["kernels"]
    total = sum(r["total_us"] for r in rows) + profile.get("other_kernels", {}).get("total_us", 0.0)
    assert total > 0 and math.isclose(total, profile["kernels_us"], abs_tol=1e-3 * (len(rows) + 1))
    assert [r["total_us"] for r in rows] == sorted((r["total_us"] for r in rows), reverse=True)
    for r in rows:
        assert isinstance(r["calls"], int) and r["calls"] >= 1 and r["total_us"] >= 0
        assert math.isclose(r["mean_us"] * r["calls"], r["total_us"], abs_tol=2e-3 * r["calls"])
    shares = sum(r["share"] for r in rows) + profile.get("other_kernels", {}).get("share", 0.0)
    assert math.isclose(shares, 1.0, abs_tol=1e-3 * (len(rows) + 1))


@pytest.mark.slow
def test_host_profile_times_each_kernel_and_the_page_shows_them(tmp_path):
    pytest.importorskip("tvm")
    out = tmp_path / "prof"
    r = cli(RESNET, "--passes", "fold-bn", "--target", "host{cores=2}", "--profile", "--html", "-o", out)
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    target, profile = report["target"], report["target"]["profile"]
    assert profile["status"] == "measured" and profile["run_us"] > 0 and profile["untimed_calls"] > 0
    # the timing hook is the VM interpreter's: a profiled host build keeps the bytecode VM
    assert report["target"]["schedule"]["vm_exec_mode"] == "bytecode"
    _kernel_rows_add_up(profile)
    # each kernel's schedule source is the build's: the counts agree with target.schedule
    sources = target["kernel_schedules"]
    assert len(sources) == target["schedule"]["kernels"]
    assert list(sources.values()).count("hand-scheduled fp32") == target["schedule"]["fp32_hand_scheduled"] > 0
    assert list(sources.values()).count("default (sampled)") == target["schedule"]["sampled"]
    # a conv whose weights were prepacked at build time runs as <kernel>_prepacked
    assert all(row["schedule"] == sources[row["name"].removesuffix("_prepacked")] for row in profile["kernels"])
    assert any(row["name"].endswith("_prepacked") for row in profile["kernels"])
    assert f"profile: {profile['kernel_count']} kernels" in r.stderr
    # times stay out of the artifact the build hashes and ships
    meta = (out / "host" / "model.json").read_text()
    assert "profile" not in meta and "total_us" not in meta

    page = Page((out / "report.html").read_text(encoding="utf-8"))
    keys = [f"target.profile.kernels.{k}.total_us" for k in range(len(profile["kernels"]))]
    assert cells_match_report(page, report, keys + ["target.profile.kernels_us", "target.profile.run_us"]) > 20
    text = page.text("target")
    assert all(row["name"] in text for row in profile["kernels"]) and "Time per kernel" in text
    assert len(page.images) == 4  # cost per pass, per layer, kernels by schedule source, time per kernel
    colours, ink = drawn(png(page.images[-1]))
    assert colours > 20 and ink > 0.02, (colours, ink)


@pytest.mark.slow
def test_arm_profile_counts_instructions_per_kernel_under_qemu(tmp_path):
    """`--profile` on an arm{cpu=cortex-a76,symbols=keep} int8 build: executed instructions per kernel under qemu
    (targets/arm_profile.py), the sdot convs the heaviest hand-scheduled kernels, and the page shows the counts."""
    pytest.importorskip("tvm")
    from compress_graph.targets import arm_profile

    why = arm_profile.missing({"symbols": "keep"})
    if why:
        pytest.skip(why)
    out = tmp_path / "prof"
    r = cli(RESNET, "--passes", "fold-bn,quant", "--target", "arm{cpu=cortex-a76,cores=1,symbols=keep}",
            "--profile", "--html", "-o", out)
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    target, profile = report["target"], report["target"]["profile"]
    assert profile["status"] == "measured" and profile["unit"] == "instructions", profile
    assert profile["threads_started"] == 0 and profile["mix"]["dot"] > 0.1  # the sdot kernels ran
    rows = profile["kernels"]
    counted = sum(row["instructions"] for row in rows) + profile.get("other_kernels", {}).get("instructions", 0)
    assert counted == profile["kernels_instructions"]
    whole = counted + sum(profile["runtime"].values())
    assert 0.99 * profile["instructions"] <= whole <= 1.01 * profile["instructions"], (whole, profile["instructions"])
    assert profile["kernels_instructions"] >= 0.8 * profile["instructions"]  # the kernels, not the runtime
    sources = target["kernel_schedules"]
    assert all(row["schedule"] == sources[row["name"]] for row in rows)
    int8 = [row for row in rows if row["schedule"] == "hand-scheduled int8"]
    assert len(int8) == target["schedule"]["int8_hand_scheduled"] and rows[0] in int8
    assert "M instructions (qemu)" in r.stderr
    assert "profile" not in (out / "arm" / "model.json").read_text()

    page = Page((out / "report.html").read_text(encoding="utf-8"))
    keys = [f"target.profile.kernels.{k}.instructions" for k in range(len(rows))]
    assert cells_match_report(page, report, keys + ["target.profile.instructions"]) > 10
    text = page.text("target")
    assert "Instructions per kernel" in text and all(row["name"] in text for row in rows)
    colours, ink = drawn(png(page.images[-1]))
    assert colours > 20 and ink > 0.02, (colours, ink)


@pytest.mark.slow
def test_tuning_curve_goes_down_and_its_trials_add_up(tmp_path, tiny_model):
    """`--tune 5` with a time budget (batches of 4: two batches per task) on the three-kernel model."""
    pytest.importorskip("tvm")
    pytest.importorskip("xgboost")  # MetaSchedule imports it even for random search
    import onnx

    model = tmp_path / "tiny.onnx"
    onnx.save(tiny_model(), model)
    out = tmp_path / "tuned"
    r = cli(model, "--passes", "", "--target", "host{cores=2}", "--tune", "5", "--time-budget", "600", "--html",
            "-o", out, "-q")
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    tuning = report["target"]["tuning"]
    tasks, points = tuning["curve"]["tasks"], tuning["curve"]["points"]
    assert len(tasks) == tuning["tasks"] == 3 and len(points) == 6  # one point per measured batch
    # trial counts add up: cumulative, batch by batch, to the run's total; each task had its 5
    assert [p["trials"] for p in points] == list(np.cumsum([p["batch_trials"] for p in points]))
    assert points[-1]["trials"] == tuning["trials"] == 15
    for t in range(len(tasks)):
        mine = [p for p in points if p["task"] == t]
        assert sum(p["batch_trials"] for p in mine) == 5 and len(mine) == 2
        best = [p["best_us"] for p in mine]
        assert all(b > 0 for b in best) and best == sorted(best, reverse=True), best  # never goes up
    model_us = [p["model_us"] for p in points]
    first = next(k for k, v in enumerate(model_us) if v is not None)
    assert first >= len(tasks) - 1 and None not in model_us[first:]  # defined once every task has a candidate
    assert model_us[first:] == sorted(model_us[first:], reverse=True)
    final = {p["task"]: p["best_us"] for p in points}
    assert math.isclose(model_us[-1], sum(tasks[t]["weight"] * b for t, b in final.items()), rel_tol=1e-3)

    page = Page((out / "report.html").read_text(encoding="utf-8"))
    keys = [f"target.tuning.curve.points.{len(points) - 1}.model_us", "target.tuning.trials"]
    assert cells_match_report(page, report, keys) > 10
    assert "not recorded" not in page.text("tuning")
    colours, ink = drawn(png(page.images[-1]))  # the tuning curve is the page's last chart
    assert colours > 20 and ink > 0.02, (colours, ink)
