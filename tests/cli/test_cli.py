import json
import os
import subprocess
import sys
import textwrap

import pytest
from cg_testutil import MODELS, assert_close
from compress_graph.cli import main

RESNET = str(MODELS / "resnet_s.onnx")


def cli(*args, env=None, cwd=None):
    """Run the real console entry point in a subprocess (exit code + stderr as a user sees them)."""
    code = "import sys; from compress_graph.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=300)


def test_success_writes_model_and_report(tmp_path):
    out = tmp_path / "out"
    r = cli(RESNET, "--passes", "fold-bn,cleanup", "-o", out)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "report.json"]
    report = json.loads((out / "report.json").read_text())
    assert report["pipeline"] == "fold-bn,cleanup"
    assert {"before", "after", "passes", "versions"} <= set(report)
    assert {"params", "macs", "bytes"} <= set(report["after"])
    assert report["passes"][0]["verify"]["worst"]["cosine"] > 0.9999
    assert "fold-bn" in r.stderr and "MACs" in r.stderr  # the per-pass table
    assert_close(RESNET, str(out / "model.onnx"))


def test_unknown_pass_exit_2_lists_known(tmp_path):
    r = cli(RESNET, "--passes", "fold-bn,bogus", "-o", tmp_path / "o")
    assert r.returncode == 2
    assert "unknown pass 'bogus'" in r.stderr and "fold-bn" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()


def test_bad_option_exit_2(tmp_path):
    r = cli(RESNET, "--passes", "fold-bn{nope=1}", "-o", tmp_path / "o")
    assert r.returncode == 2 and "unknown option 'nope'" in r.stderr
    r = cli(RESNET, "--passes", "fold-bn", "--seed", "x", "-o", tmp_path / "o")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_truncated_model_exit_3_one_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes((MODELS / "resnet_s.onnx").read_bytes()[:5000])
    r = cli(bad, "--passes", "fold-bn", "-o", tmp_path / "o")
    assert r.returncode == 3
    assert len([line for line in r.stderr.splitlines() if line.startswith("error:")]) == 1
    assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o")]  # no temp folder left


def test_missing_model_exit_3(tmp_path):
    r = cli(tmp_path / "nope.onnx", "--passes", "fold-bn", "-o", tmp_path / "o")
    assert r.returncode == 3 and "no such file" in r.stderr


def test_deterministic_output(tmp_path):
    for name in ("a", "b"):
        assert cli(RESNET, "--passes", "fold-bn,cleanup", "-o", tmp_path / name, "-q").returncode == 0
    assert (tmp_path / "a" / "model.onnx").read_bytes() == (tmp_path / "b" / "model.onnx").read_bytes()


def test_budget_exceeded_exit_4_report_written(tmp_path):
    plugin = tmp_path / "noise.py"
    plugin.write_text(textwrap.dedent('''
        import numpy as np
        import onnx_graphsurgeon as gs
        from compress_graph.passes import Pass, PassResult, register_pass

        @register_pass
        class Perturb(Pass):
            name = "perturb-weights"
            description = "adds noise to every weight (test plugin)"

            def run(self, model, ctx):
                rng = np.random.default_rng(0)
                for t in model.graph.tensors().values():
                    if isinstance(t, gs.Constant) and t.values.dtype == np.float32 and t.values.ndim == 4:
                        t.values = (t.values + rng.normal(0, 0.5, t.values.shape)).astype(np.float32)
                return PassResult(model, True, {"perturbed": True})
    '''))
    out = tmp_path / "o"
    r = cli(RESNET, "--plugin", plugin, "--passes", "perturb-weights", "--min-cosine", "0.999", "-o", out)
    assert r.returncode == 4, r.stderr
    assert "below --min-cosine" in r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "budget_exceeded"
    assert report["passes"][0]["stats"] == {"perturbed": True}


def test_plugin_from_file_and_module_class(tmp_path):
    (tmp_path / "myplug.py").write_text(textwrap.dedent('''
        from compress_graph.passes import Pass, PassResult, option
        from dataclasses import dataclass

        class CountNodes(Pass):
            name = "count-nodes"
            description = "counts nodes (test plugin)"

            @dataclass
            class Options:
                label: str = option("n", "stats key")

            def run(self, model, ctx):
                return PassResult(model, False, {self.options.label: len(model.graph.nodes)})
    '''))
    for spec in (tmp_path / "myplug.py", "myplug:CountNodes"):
        out = tmp_path / f"o{len(str(spec))}"
        r = cli(RESNET, "--plugin", spec, "--passes", "count-nodes{label=nodes}", "-o", out,
                env={"PYTHONPATH": str(tmp_path)})
        assert r.returncode == 0, r.stderr
        rec = json.loads((out / "report.json").read_text())["passes"][0]
        assert rec["name"] == "count-nodes" and rec["stats"]["nodes"] > 10


def test_plugin_from_entry_point(tmp_path):
    site = tmp_path / "site"
    (site / "epplug-0.1.dist-info").mkdir(parents=True)
    (site / "epplug-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: epplug\nVersion: 0.1\n")
    (site / "epplug-0.1.dist-info" / "entry_points.txt").write_text(
        "[compress_graph.passes]\nnoop = epplug:Noop\n")
    (site / "epplug.py").write_text(textwrap.dedent('''
        from compress_graph.passes import Pass, PassResult

        class Noop(Pass):
            name = "ep-noop"
            description = "does nothing (entry-point plugin)"

            def run(self, model, ctx):
                return PassResult(model, False, {"entry_point": True})
    '''))
    env = {"PYTHONPATH": str(site)}
    r = cli("passes", env=env)
    assert r.returncode == 0 and "ep-noop" in r.stdout
    out = tmp_path / "o"
    r = cli(RESNET, "--passes", "fold-bn,ep-noop", "-o", out, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "report.json").read_text())["passes"][1]["stats"] == {"entry_point": True}


def test_config_file(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('passes = "fold-bn"\nseed = 3\nverify = false\n')
    out = tmp_path / "o"
    r = cli(RESNET, "--config", cfg, "-o", out)
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["pipeline"] == "fold-bn" and "verify" not in rep["passes"][0]
    cfg.write_text('passes = "fold-bn"\nbogus = 1\n')
    r = cli(RESNET, "--config", cfg, "-o", out)
    assert r.returncode == 2 and "unknown option 'bogus'" in r.stderr


def test_output_folder_with_foreign_files_is_refused(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    r = cli(RESNET, "--passes", "fold-bn", "-o", out)
    assert r.returncode == 2 and "holds other files" in r.stderr
    assert (out / "precious.txt").read_text() == "keep me"


def test_rerun_replaces_previous_output(tmp_path):
    out = tmp_path / "o"
    assert cli(RESNET, "--passes", "", "-o", out, "-q").returncode == 0
    first = (out / "model.onnx").read_bytes()
    assert cli(RESNET, "--passes", "fold-bn", "-o", out, "-q").returncode == 0
    assert (out / "model.onnx").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_inspect_and_passes_commands(tmp_path, capsys):
    assert main(["inspect", RESNET, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["summary"]["macs"] > 1_000_000 and data["ops"]["Conv"] > 5
    assert main(["passes", "--json"]) == 0
    names = {p["name"] for p in json.loads(capsys.readouterr().out)}
    assert {"fold-bn", "cleanup", "fold-constants"} <= names


@pytest.mark.parametrize("args", [["--help"], ["passes", "--help"], ["--version"]])
def test_help_exits_0(args, capsys):
    assert main(args) == 0
