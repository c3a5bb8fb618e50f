"""What a target build records for the report beside the library: time per kernel (`--profile`,
targets/kernel_profile.py) and the tuning curve (targets/tuning.py). The end-to-end runs are in
tests/cli/test_report_html.py; these pin the bookkeeping without building anything."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest
from compress_graph.cli import main
from compress_graph.targets import arm, arm_profile, host, jetson, kernel_profile
from compress_graph.targets.tuning import _record_batch


def test_targets_that_cannot_time_kernels_here_say_why():
    note = kernel_profile.measure(arm, "model.so", [], {"cpu": "cortex-a72", "symbols": "strip"}, {})
    assert note["status"] == "skipped" and "arm{symbols=keep}" in note["reason"]
    note = kernel_profile.measure(jetson, "model.so", [], {}, {})
    assert note["status"] == "not measured" and "--target host only" in note["reason"]
    assert callable(host.profile)


def test_a_library_that_fails_while_timed_is_reported_not_raised(tmp_path):
    broken = tmp_path / "model.so"
    broken.write_bytes(b"not a library")
    pytest.importorskip("tvm")
    record = kernel_profile.measure(host, broken, [], {"isa": "auto"}, {})
    assert record["status"] == "failed" and record["reason"]


def test_summary_ranks_kernels_and_sums_the_rest():
    calls = {f"k{i:02d}": [1 + i % 2, (i + 1) * 1e-6] for i in range(kernel_profile.TOP_KERNELS + 5)}
    calls["tie_b"] = calls["tie_a"] = [1, 50e-6]
    record = kernel_profile.summarize({"runs": 3, "run_s": 2e-3, "calls": calls, "untimed_calls": 7},
                                      {"k00": "tuned (records)"})
    rows = record["kernels"]
    assert len(rows) == kernel_profile.TOP_KERNELS and record["kernel_count"] == len(calls)
    assert [r["name"] for r in rows[:2]] == ["tie_a", "tie_b"]  # heaviest first, ties by name
    assert record["other_kernels"]["kernels"] == len(calls) - kernel_profile.TOP_KERNELS
    total = sum(r["total_us"] for r in rows) + record["other_kernels"]["total_us"]
    assert total == pytest.approx(record["kernels_us"]) and record["run_us"] == 2000.0
    assert sum(r["share"] for r in rows) + record["other_kernels"]["share"] == pytest.approx(1.0, abs=1e-3)
    assert {r["schedule"] for r in rows} == {"not a model kernel (runtime function)"}  # k00 is not in the top
    mean = {r["name"]: r["mean_us"] for r in rows}
    assert mean["k43"] == pytest.approx(44 / 2)  # two calls of 44 us in all


def test_arm_counts_add_a_parallel_body_to_its_kernel_and_keep_the_runtime_apart():
    functions = {"fused_conv_compute_": 900.0, "fused_conv": 100.0, "pool_compute_": 300.0, "pool_compute_1": 50.0,
                 "libtvm_runtime.so": 120.0, "libc.so.6": 30.0, "(unmapped)": 0.0, "tiny_prepacked": 1.0}
    counted = {"instructions": 1600.0, "functions": functions, "qemu_cpu": "cortex-a76", "mix": {"dot": 0.3}}
    record = kernel_profile.measure(SimpleNamespace(profile=lambda *a: {"counted": counted}), "model.so", [], {},
                                    {"fused_conv": "hand-scheduled int8", "pool": "default (sampled)",
                                     "tiny": "hand-scheduled fp32"})
    assert record["status"] == "measured" and record["unit"] == "instructions"
    rows = {r["name"]: r for r in record["kernels"]}
    assert list(rows) == ["fused_conv", "pool", "tiny_prepacked"] and rows["fused_conv"]["instructions"] == 1000
    assert rows["tiny_prepacked"]["schedule"] == "hand-scheduled fp32"
    assert rows["pool"]["instructions"] == 350 and rows["pool"]["schedule"] == "default (sampled)"
    assert rows["fused_conv"]["share"] == pytest.approx(1000 / 1600, abs=1e-4)
    assert record["runtime"] == {"libtvm_runtime.so": 120, "libc.so.6": 30, "(unmapped)": 0}
    assert record["kernels_instructions"] == 1351 and record["kernel_count"] == 3 and "cortex-a76" in record["method"]
    capped = arm_profile.summarize(counted, {"fused_conv": "", "pool": "", "tiny": ""}, top=1)
    assert capped["other_kernels"] == {"kernels": 2, "instructions": 351, "share": round(351 / 1600, 4)}


def test_tuning_curve_keeps_the_best_so_far_and_sums_once_every_task_has_one():
    tasks = [SimpleNamespace(ctx=SimpleNamespace(task_name=n), task_weight=w) for n, w in (("conv", 2), ("dense", 1))]
    stats = {"trials": 0, "tasks": [], "best_s": {}, "curve": []}
    for task, trials, best in ((0, 4, 20e-6), (1, 4, None), (1, 4, 3e-6), (0, 4, 25e-6), (0, 2, 10e-6)):
        stats["trials"] += trials
        _record_batch(stats, tasks, task, trials, best)
    curve = stats["curve"]
    assert [p["trials"] for p in curve] == [4, 8, 12, 16, 18] and stats["tasks"][0] == {"name": "conv", "weight": 2}
    assert [p["best_us"] for p in curve] == [20.0, None, 3.0, 20.0, 10.0]  # a worse batch keeps the best
    assert [p["model_us"] for p in curve] == [None, None, 43.0, 43.0, 23.0]


def test_profile_needs_a_target(capsys, models_dir, tmp_path):
    assert main([str(models_dir / "resnet_s.onnx"), "--passes", "", "--profile", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--profile" in err[0] and "--target host" in err[0] and not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None, reason="aarch64 cross compiler absent")
def test_an_arm_build_asked_to_profile_says_why_not_and_lists_its_kernels(tmp_path, tiny_model):
    """Kernel symbols stripped (the default): no per-kernel counts, and the report says how to get them."""
    pytest.importorskip("tvm")
    from compress_graph.targets import build_for_target

    section = build_for_target(tiny_model(), "arm", tmp_path, profile=True)
    assert section["profile"]["status"] == "skipped" and "symbols=keep" in section["profile"]["reason"]
    assert len(section["kernel_schedules"]) == section["schedule"]["kernels"]


def test_hand_written_kernels_are_labelled_hand_scheduled_not_tuned():
    """A kernel written as TIR by hand (int8/lookup.py's NEON tables) carries the scheduled mark that keeps tuning
    off it; the report names it hand-scheduled, not tuned."""
    tvm = pytest.importorskip("tvm")
    from compress_graph.targets.int8.lookup import lookup_func

    written = lookup_func(40, "uint8", "uint8")
    tuned = written.without_attr(kernel_profile.HAND_WRITTEN_ATTR)
    mod = tvm.IRModule({"table_lookup": written, "fused_conv": tuned})
    sources = kernel_profile.kernel_sources(mod, [], [], {"default": "metaschedule-sample (seeded)"})
    assert sources == {"fused_conv": "tuned (records)", "table_lookup": "hand-scheduled int8"}
