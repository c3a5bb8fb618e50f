from dataclasses import dataclass

import pytest
from cg_testutil import MODELS
from compress_graph import load, run_pipeline
from compress_graph.ir.errors import UsageError
from compress_graph.passes import REGISTRY, Pass, PassResult, option, parse_pipeline, pipeline_text
from compress_graph.passes.pipeline import PassFailure, parse_pipeline_items
from compress_graph.passes.registry import Registry


@dataclass
class _Opts:
    ratio: float = option(0.3, "fraction")
    name: str = option("l2", "criterion", choices=["l1", "l2"])
    exclude: list[str] = option([], "patterns")
    on: bool = option(True, "flag")
    limit: int | None = option(None, "limit")


class _Demo(Pass):
    name = "demo-pass"
    description = "test"
    Options = _Opts

    def run(self, model, ctx):
        return PassResult(model, False, {})


@pytest.fixture(autouse=True)
def _demo_registered():
    REGISTRY._passes["demo-pass"] = _Demo
    yield
    REGISTRY._passes.pop("demo-pass", None)


@pytest.mark.parametrize("text", [
    "fold-bn",
    "fold-bn,cleanup",
    "demo-pass{ratio=0.5,name=l1}",
    "demo-pass{name=l1,ratio=0.5},fold-bn",
    'demo-pass{exclude=head*|*.cls,limit=3},cleanup{fold=false}',
    'demo-pass{exclude="a,b{c}"}',
])
def test_pipeline_text_round_trips(text):
    passes = parse_pipeline(text)
    assert pipeline_text(passes) == text
    assert pipeline_text(parse_pipeline(pipeline_text(passes))) == text


def test_options_are_typed():
    (p,) = parse_pipeline("demo-pass{ratio=0.5,exclude=a|b,on=false,limit=7}")
    assert p.options.ratio == 0.5 and p.options.exclude == ["a", "b"] and p.options.on is False
    assert p.options.limit == 7
    (q,) = parse_pipeline("demo-pass")
    assert q.options.ratio == 0.3 and q.options.exclude == []


@pytest.mark.parametrize("text,needle", [
    ("nope", "unknown pass 'nope' .*fold-bn"),
    ("demo-pass{bogus=1}", "unknown option 'bogus'.*ratio"),
    ("demo-pass{ratio=abc}", "expects float"),
    ("demo-pass{name=l3}", "must be one of l1, l2"),
    ("demo-pass{ratio=1,ratio=2}", "given twice"),
    ("demo-pass{ratio=1", "missing '}'"),
    ("demo-pass{ratio}", "key=value"),
    ("fold-bn,,cleanup", "empty pass name"),
])
def test_bad_pipelines_are_usage_errors(text, needle):
    with pytest.raises(UsageError, match=needle):
        parse_pipeline(text)


def test_generic_items_parser():
    assert parse_pipeline_items("arm{cpu=cortex-a55},host") == [("arm", {"cpu": "cortex-a55"}), ("host", {})]


def test_duplicate_registration_is_an_error():
    reg = Registry()
    reg.register(_Demo)

    class Other(Pass):
        name = "demo-pass"

    with pytest.raises(UsageError, match="already registered"):
        reg.register(Other)


def test_bad_pass_name_is_refused():
    class Bad(Pass):
        name = "Bad_Name"

    with pytest.raises(UsageError, match="kebab-case"):
        Registry().register(Bad)


def test_report_structure_and_input_untouched():
    m = load(MODELS / "resnet_s.onnx")
    n_before = len(m.graph.nodes)
    out, report = run_pipeline(m, "fold-bn,cleanup")
    assert len(m.graph.nodes) == n_before  # the input model is not modified
    assert report["pipeline"] == "fold-bn,cleanup"
    assert [p["name"] for p in report["passes"]] == ["fold-bn", "cleanup"]
    rec = report["passes"][0]
    assert rec["modified"] and rec["time_s"] >= 0 and rec["verify"]["checker"] == "ok"
    assert rec["verify"]["worst"]["cosine"] > 0.99999
    assert report["before"]["params"] > report["after"]["params"]
    assert set(report["versions"]) >= {"compress-graph", "onnx", "onnxruntime", "tvm"}


def test_crash_saves_reproducer(tmp_path):
    class Crash(Pass):
        name = "crash-pass"

        def run(self, model, ctx):
            raise RuntimeError("boom")

    REGISTRY._passes["crash-pass"] = Crash
    try:
        m = load(MODELS / "face_s.onnx")
        with pytest.raises(PassFailure, match="boom.*reproducer"):
            run_pipeline(m, "fold-bn,crash-pass", reproducer_dir=tmp_path / "repro")
        info = (tmp_path / "repro" / "reproducer.json").read_text()
        assert "fold-bn,crash-pass" in info
        assert load(tmp_path / "repro" / "input.onnx")
    finally:
        REGISTRY._passes.pop("crash-pass")


def test_dump_ir_writes_every_pass(tmp_path):
    m = load(MODELS / "face_s.onnx")
    run_pipeline(m, "fold-bn,cleanup", dump_ir=tmp_path, verify=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["001_fold-bn.onnx", "002_cleanup.onnx"]
