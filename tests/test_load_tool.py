"""The load tool against the real app on loopback (uvicorn + in-process csm-tiny backend with
2 slots and a queue of 1, so 6 concurrent clients overload it): every request is accounted
for, overload is 429 with Retry-After, streamed audio is counted exactly, JSON and PNG are written."""

import json

import pytest

from benchmarks.load import main
from models import EngineConfig
from tests.local_server import local_server

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    engine = EngineConfig(model="csm-tiny", device="cpu", max_num_seqs=2)
    with local_server(str(tmp_path_factory.mktemp("voices")), engine, max_queued_requests=1) as (url, _):
        yield url


LEVEL_FIELDS = {"label", "mode", "max_concurrent_ok", "sent", "ok", "rejected", "failed", "lost", "wall_s", "ttfa_s", "rtf", "audio_s",
                "throughput_audio_s_per_s", "rejections", "errors_by_status"}


def test_sweep_and_open_loop_account_for_every_request(server, tmp_path, capsys):
    out = tmp_path / "load.json"
    report = main(["--url", server, "--concurrency", "1", "6", "--requests-per-level", "6",
                   "--rate", "8", "--duration-s", "2", "--max-audio-seconds", "0.5", "--timeout-s", "20",
                   "--seed", "3", "--out", str(out), "--metrics-url", server + "/metrics"])
    saved = json.loads(out.read_text())
    assert saved == report == json.loads(capsys.readouterr().out)
    levels = {lv["label"]: lv for lv in saved["levels"]}
    assert list(levels) == ["c=1", "c=6", "8/s"]
    for lv in levels.values():
        assert LEVEL_FIELDS <= set(lv)
        assert lv["lost"] == 0 and lv["sent"] == lv["ok"] + lv["rejected"] + lv["failed"] > 0
        assert lv["failed"] == 0, lv["errors_by_status"]
        assert lv["ok"] > 0 and lv["audio_s"]["min"] == lv["audio_s"]["max"] == 0.5  # 12000 samples each, exactly
        assert lv["audio_s"]["total"] == 0.5 * lv["ok"]
        assert 0 < lv["ttfa_s"]["p50"] <= lv["ttfa_s"]["p95"] <= lv["ttfa_s"]["p99"] < 20
        assert 0 < lv["rtf"]["p50"] <= lv["rtf"]["p95"] and lv["throughput_audio_s_per_s"] > 0
        assert lv["rejections"]["without_retry_after"] == 0  # every 429 carried Retry-After
        heard = lv["listeners"]  # every ok stream was listened to: held in real time, or it had gaps
        assert heard["real_time_streams_held"] + heard["streams_with_underruns"] == lv["ok"]
        assert heard["underruns"] >= heard["streams_with_underruns"] and heard["min_slack_s"]["p50"] is not None
        assert set(lv["errors_by_status"]) <= {"429"} and lv["errors_by_status"].get("429", 0) == lv["rejected"]
    assert levels["c=1"]["sent"] == 6 and levels["c=1"]["rejected"] == 0
    for lv in levels.values():  # where the time went, from the server's histograms, per level
        assert {"queue", "prefill", "decode", "encode", "step"} <= set(lv["stages"])
        for stage in lv["stages"].values():
            assert stage["count"] > 0 and 0 <= stage["p50_s"] <= stage["p95_s"] and stage["mean_s"] >= 0
    assert levels["c=1"]["stages"]["queue"]["count"] == 6  # one queue observation per stream
    overloaded = levels["c=6"]  # 6 at once against 2 slots + 1 queued
    assert overloaded["sent"] == 6 and overloaded["rejected"] >= 3 and overloaded["errors_by_status"]["429"] >= 3
    assert overloaded["rejections"]["with_retry_after"] == overloaded["rejected"]
    assert overloaded["rejections"]["latency_s"]["max"] < overloaded["ttfa_s"]["p99"] + 1.0
    assert levels["8/s"]["sent"] >= 4  # Poisson(16) arrivals in 2 s, seeded
    png = tmp_path / "load.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_clients_can_honour_retry_after(server, tmp_path):
    """With --honor-retry-after a rejected client waits what the server said (retry-after-ms:
    when the running streams end) before its next request, so the level lasts at least the
    longest of those waits (without it, rejected clients retry at once)."""
    report = main(["--url", server, "--concurrency", "6", "--requests-per-level", "12", "--max-audio-seconds", "0.25",
                   "--honor-retry-after", "--out", str(tmp_path / "load.json"), "--warmup", "0"])
    level = report["levels"][0]
    assert level["lost"] == 0 and level["failed"] == 0 and level["rejected"] >= 1
    waits = level["rejections"]["retry_after_s"]
    assert 0 < waits["max"] < 2.0  # a quarter-second stream is about to end: not the old constant 2 s
    assert level["wall_s"] >= waits["max"] and report["config"]["honor_retry_after"] is True


def test_stage_quantiles_follow_histogram_quantile():
    """benchmarks/stages.py against numbers worked by hand: PromQL's interpolation within a
    bucket, summed over series, the `ray_` prefix, and a level's difference of two scrapes."""
    from benchmarks.stages import difference, parse

    def text(n_low: int, n_high: int) -> str:
        lines = ["# TYPE ray_tts_stage_seconds histogram"]
        for replica in ("a", "b"):  # two replicas: the counts add up
            lines += [f'ray_tts_stage_seconds_bucket{{stage="decode",replica="{replica}",le="0.01"}} {n_low}',
                      f'ray_tts_stage_seconds_bucket{{stage="decode",replica="{replica}",le="0.03"}} {n_low + n_high}',
                      f'ray_tts_stage_seconds_bucket{{stage="decode",replica="{replica}",le="+Inf"}} {n_low + n_high}',
                      f'ray_tts_stage_seconds_count{{stage="decode",replica="{replica}"}} {n_low + n_high}',
                      f'ray_tts_stage_seconds_sum{{stage="decode",replica="{replica}"}} {0.005 * n_low + 0.02 * n_high}']
        return "\n".join(lines) + "\n"

    level = difference(parse(text(10, 0)), parse(text(20, 10)))  # this level: 20 in (0, 10 ms], 20 in (10, 30 ms]
    decode = level["decode"]
    assert decode["count"] == 40 and abs(decode["mean_s"] - (20 * 0.005 + 20 * 0.02) / 40) < 1e-12
    assert abs(decode["p50_s"] - 0.01) < 1e-12  # rank 20: the top of the first bucket
    assert abs(decode["p95_s"] - (0.01 + 0.02 * 18 / 20)) < 1e-12  # rank 38: 18 of 20 into the second


def test_capacity_is_read_from_both_exports():
    """The benchmarks read the replicas' capacity from the in-process server's export (no labels)
    and from Ray's (a `ray_` prefix and labels); help lines and other gauges are not counted."""
    from benchmarks.realtime_serve import capacity_of
    local = ("# HELP tts_realtime_capacity_streams Interactive streams\n# TYPE tts_realtime_capacity_streams gauge\n"
             "tts_realtime_capacity_streams 7.0\ntts_realtime_capacity_streams_other 3.0\n")
    ray = ('ray_tts_realtime_capacity_streams{replica="a",model="csm-tiny"} 6.0\n'
           'ray_tts_realtime_capacity_streams{replica="b",model="csm-tiny"} 5.0\n'
           'ray_tts_realtime_headroom_streams{replica="a"} 2.0\n')
    assert capacity_of(local) == 7.0 and capacity_of(ray) == 11.0 and capacity_of("") is None
