"""benchmarks/socket_bench.py against a real in-process server: both clients speak every reply,
and the report has what the README quotes (latency, silence, refusals), each measured."""

from benchmarks import socket_bench
from models import EngineConfig
from tests.local_server import local_server


def test_socket_and_http_clients_speak_every_reply(tmp_path):
    engine = EngineConfig(model="csm-tiny", device="cpu", max_num_seqs=4, max_frames_cap=6)
    with local_server(str(tmp_path), engine) as (url, replica):
        report = socket_bench.main(["--url", url, "--concurrency", "1", "2", "--replies", "1", "--words-per-s", "200"])
    assert [(r["mode"], r["concurrency"]) for r in report] == [("socket", 1), ("http", 1), ("socket", 2), ("http", 2)]
    for row in report:
        assert row["ok"] == row["replies"] == row["concurrency"] and row["failed"] == {}, row
        assert 0 < row["first_latency_s"]["p50"] < 30 and row["silence_s"]["max"] >= 0
    assert replica.stats().num_streams == 0
