"""benchmarks/interrupt_bench.py runs against a real server and measures what it says."""

from __future__ import annotations

import asyncio

from benchmarks.interrupt_bench import main
from tests.conftest import wait_engine_idle
from tests.local_server import local_server


def test_interrupt_bench_against_a_local_server(tmp_path):
    with local_server(str(tmp_path)) as (url, replica):
        report = asyncio.run(main(url, trials=2, after_s=0.5))
        wait_engine_idle(replica)
        assert replica.stats().num_streams == 0  # every cancelled reply gave its row back
    assert report["cancelled"] == 2 and all(r["status"] == "cancelled" for r in report["runs"])
    assert 0 <= report["to_done_ms"]["max"] < 5000 and report["bytes_after"]["max"] < 0.5 * 48_000
