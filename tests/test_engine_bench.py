"""The engine benchmark runs end to end (tiny model, short requests) and reports ratios."""

import json

import pytest

from benchmarks.accel_bench import main as accel_main
from benchmarks.engine_bench import main


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
def test_accel_bench_smoke(tmp_path, capsys):
    """The accelerator benchmark's three systems on CPU (captured = torch.compile here)."""
    out = tmp_path / "accel.json"
    report = accel_main(["--model", "csm-tiny", "--device", "cpu", "--dtype", "float32", "--concurrency", "3",
                         "--frames", "6", "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == report
    res = report["results"]
    assert res["eager"]["capture"] == "eager" and res["captured"]["capture"] == "compile"
    assert res["transformers"]["compiled"] is False  # generate compiles on cuda only
    for row in res.values():
        assert row["batch"]["requests"] == 3 and row["batch"]["frames_per_s"] > 0 and row["single"]["rtf"] > 0
    assert res["captured"]["ttfa_batch"]["ttfa_p50_s"] > 0
    assert "captured_over_eager_batch" in report["speedups"] and "speedups:" in capsys.readouterr().out
