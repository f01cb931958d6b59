"""The engine benchmark runs end to end (tiny model, short requests) and reports ratios."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.engine_bench import main

ROOT = Path(__file__).resolve().parents[1]


def test_bench_smoke(tmp_path, capsys):
    out = tmp_path / "bench.json"
    report = main(["--model", "csm-tiny", "--concurrency", "1", "4", "--frames-scale", "0.08",
                   "--max-wait-s", "0.2", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved == report
    for c in ("1", "4"):
        row = saved["results"][c]
        assert row["engine"]["frames"] == row["static"]["frames"] > 0
        assert row["engine"]["frames_per_s"] > 0 and row["speedup_vs_static"] > 0
    assert "engine speedup vs sequential @4:" in capsys.readouterr().out


@pytest.mark.slow
def test_device_check_dry_run(tmp_path):
    """`make device-check-dry`: the GPU check's every step on this CPU (csm-tiny), so the
    command cannot rot before a GPU host is available. The bench step is the accelerator
    benchmark's three systems (captured = torch.compile on CPU); the listen step serves
    csm-tiny over HTTP and plays pcm streams back in real time at c=1 and c=2, then a burst of 8,
    beside the engine alone's capacity."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.device_check", "--dry-run", "--out", str(out),
                           "--budget-s", "600"], check=False, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # few files, so all of them come back from a lent machine
    assert sorted(p.name for p in out.iterdir()) == ["accel-cpu.json", "device-check.json", "device-check.log"]
    report = json.loads((out / "device-check.json").read_text())
    assert list(report["steps"]) == ["setup", "env", "tests", "accuracy", "ops", "bench", "listen"]
    assert all(s["status"].startswith("ok") for s in report["steps"].values()), report["steps"]
    tests = report["steps"]["tests"]  # no accelerator here: every accelerator test skipped, and said so
    accel_tests = (ROOT / "tests/models/test_accel.py").read_text().count("\ndef test_")
    assert tests["tests"] == accel_tests >= 2 and tests["skipped"] == tests["tests"] and tests["passed"] == 0
    assert tests["status"] == f"ok (dry run: all {tests['tests']} skipped, no accelerator)"
    assert report["accuracy"]["codebooks"] == 32 and report["accuracy"]["cosine_min"] > 0.99
    ops = report["ops"]["rows"]  # the step's launches: on the CPU eager only, host ops counted, no kernels
    assert [(r["mode"], r["batch"]) for r in ops] == [("eager", 1), ("eager", 8)]
    assert all(r["cpu_ops"] > 0 and r["device_kernels"] == 0 and r["step_ms"] > 0 for r in ops)
    res = report["bench"]["results"]
    assert res["eager"]["capture"] == "eager" and res["captured"]["capture"] == "compile"
    assert res["transformers"]["compiled"] is False  # generate compiles on cuda only
    for row in res.values():
        assert set(row["batches"]) == {"2", "4"} and row["single"]["rtf"] > 0
        assert all(b["frames_per_s"] > 0 for b in row["batches"].values())
    assert res["captured"]["ttfa_single"]["ttfa_p50_s"] > 0 and "captured_over_eager_c4" in report["bench"]["speedups"]
    listen = report["listen"]  # what real-time listeners heard, per level, from the served API
    assert listen["config"]["model"] == "csm-tiny" and listen["server_start_s"] > 0 and listen["problems"] == []
    assert [lv["label"] for lv in listen["levels"]] == ["c=1", "c=2", "c=8"]  # the last: a burst of 8 at once
    burst = listen["levels"][-1]
    assert burst["ok"] + burst["rejected"] == 8 and burst["ok"] >= 1 and burst["failed"] == burst["lost"] == 0
    assert burst["capacity_after"] >= 1 and listen["engine_alone"]["capacity"] >= 1
    assert listen["served_over_engine_alone"] > 0
    for lv in listen["levels"][:2]:
        heard = lv["listeners"]
        assert lv["sent"] == lv["ok"] == 2 * lv["concurrency"] and lv["failed"] == lv["lost"] == 0
        assert lv["ttfa_s"]["p95"] >= lv["ttfa_s"]["p50"] > 0 and lv["rtf"]["p50"] > 0
        assert heard["streams_with_underruns"] + heard["real_time_streams_held"] == lv["ok"]
        assert heard["min_slack_s"]["p50"] is not None and lv["audio_s"]["min"] > 0
    assert json.loads((out / "accel-cpu.json").read_text())["listen"] == listen
    log = (out / "device-check.log").read_text()
    assert "===== bench =====" in log and "===== listen =====" in log and "===== ops =====" in log
    lines = proc.stdout.strip().splitlines()  # the table comes last, the listeners' rows at its end
    assert [line.split()[1] for line in lines[-3:]] == ["c=1", "c=2", "c=8"]
    assert any(line.startswith("speedup") for line in lines)
    assert any(line.startswith("ops        eager    batch   8:") for line in lines)
    assert "== device check: cpu ==" in proc.stdout


def test_device_check_counts_a_skipped_accelerator_test_as_a_failure(tmp_path):
    """On a card, the tests step fails unless every accelerator test ran and passed: a
    junit report with one skipped test (what a card the tests cannot see looks like) fails
    it; one with all passed keeps it ok; a dry run requires all skipped."""
    from benchmarks.device_check import Check

    def judged(dry_run: bool, skipped: int, tests: int = 3) -> str:
        check = Check(tmp_path / "out", tmp_path / "work", budget_s=60)
        check.steps["tests"] = {"status": "ok", "seconds": 1}
        report = tmp_path / "tests.xml"
        report.write_text(f'<testsuites><testsuite tests="{tests}" failures="0" errors="0" skipped="{skipped}"/></testsuites>')
        check.judge_tests(report, dry_run)
        return check.steps["tests"]["status"]

    assert judged(False, skipped=1).startswith("failed: 1 skipped, 2 of 3 passed")
    assert judged(False, skipped=0) == "ok"
    assert judged(True, skipped=3) == "ok (dry run: all 3 skipped, no accelerator)"
    assert judged(True, skipped=2).startswith("failed: a dry run must skip every accelerator test")


def test_step_ab_runs_on_the_tiny_model():
    from benchmarks.step_ab import main as step_ab

    report = step_ab(["--label", "smoke", "--model", "csm-tiny"])
    assert report["steady_step_ms_median"] > 0 and report["mixed_frames_per_s"] > 0


def test_step_ab_capacity_is_the_most_rows_within_the_frame_budget():
    from benchmarks.step_ab import capacity

    measured = {"1": 20.0, "4": 30.0, "8": 50.0, "12": 70.0, "16": 80.0}  # ms per step
    assert capacity(measured, 0.2) == 11  # 11 rows: 65 ms interpolated, 12: 70 ms > 66.7 ms
    assert capacity(measured, 0.1) == 13  # budget 72.7 ms: 13 rows 72.5 ms
    assert capacity({"1": 70.0}, 0.2) == 0 and capacity({"1": 10.0, "16": 20.0}, 0.2) == 16


@pytest.mark.slow
def test_step_ab_pairs_a_git_revision_with_this_tree(tmp_path):
    """--ref: the revision's tree and this one in turn, each in its own process, per batch size."""
    from benchmarks.step_ab import main as step_ab

    report = step_ab(["--ref", "HEAD", "--model", "csm-tiny", "--workloads", "sizes", "--sizes", "1", "2",
                      "--steps", "2", "--rounds", "1", "--out", str(tmp_path / "ab.json")])
    assert set(report["step_ms"]) == {"old", "new"} and set(report["step_ms"]["old"]) == {"1", "2"}
    assert all(ms > 0 for side in report["step_ms"].values() for ms in side.values())
    assert report["new_over_old"]["1"] > 0 and set(report["realtime_capacity"]) == {"old", "new"}
    assert report["runs"]["old"][0]["label"] == "old (HEAD)"


def test_op_count_counts_a_decode_step_by_source():
    """benchmarks/op_count.py on csm-tiny: every counted op has one source, and the sampler is
    a frame's noise at once plus a handful of ops per codebook (not ~80 per codebook)."""
    from benchmarks.op_count import ORDER, main as op_count

    report = op_count(["--batch", "1", "2", "--steps", "2"])
    assert [(r["mode"], r["batch"]) for r in report["rows"]] == [("eager", 1), ("eager", 2)]
    for row in report["rows"]:
        assert sum(row["by_source"].values()) == row["ops"] == sum(row["by_kind"].values()) > 0
        assert set(row["by_source"]) <= set(ORDER) and row["by_source"]["depth step"] > 0
        assert row["by_source"]["sampler"] <= 8 * 32 + 60, row["by_source"]
        assert 0 < row["leaves"] < row["ops"] and row["step_ms"] > 0
