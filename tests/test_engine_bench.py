"""The engine benchmark runs end to end (tiny model, short requests) and reports ratios."""

import json

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
