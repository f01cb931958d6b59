"""Soak: a bounded run of steady load leaves memory, file descriptors and threads flat."""

import gc
import os
import threading
import time

import httpx
import pytest

from tests.conftest import fan_out
from tests.local_server import local_server

pytestmark = pytest.mark.slow
SOAK_S = float(os.environ.get("CSM_SOAK_S", "60"))  # CSM_SOAK_S=600 for a longer soak


def _rss_bytes() -> int:
    """RSS after a full garbage collection: cyclic garbage (asyncio, exceptions) waiting for
    Python's oldest generation is not a leak, and would make the curve a sawtooth."""
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _load(url: str, seconds: float, clients: int, outcomes: list) -> None:
    stop = time.monotonic() + seconds

    def client(i):
        with httpx.Client(timeout=60) as http:
            n = 0
            while time.monotonic() < stop:
                r = http.post(url + "/v1/audio/speech", json={
                    "model": "tts-1", "voice": "alloy", "input": f"Soak {i} {n}.", "response_format": "pcm",
                    "seed": n, "max_audio_seconds": 0.48})
                outcomes.append((r.status_code, len(r.content)))
                n += 1

    fan_out(client, range(clients), timeout_s=seconds + 120)


def test_steady_load_keeps_rss_fds_and_threads_flat(tmp_path):
    """RSS is sampled through the run: allocator pools grow over the first minutes and then
    stay put, so the second half of the run must add (almost) nothing."""
    with local_server(str(tmp_path)) as (url, backend):
        warm: list = []
        _load(url, 10, 4, warm)  # allocator pools and caches settle first
        rss, fds, threads = _rss_bytes(), _fds(), threading.active_count()
        outcomes: list = []
        samples = []
        load = threading.Thread(target=_load, args=(url, SOAK_S, 4, outcomes))
        load.start()
        while load.is_alive():
            load.join(SOAK_S / 10)
            samples.append(round((_rss_bytes() - rss) / 2**20, 1))
        time.sleep(1)
        grown = (_rss_bytes() - rss) / 2**20, _fds() - fds, threading.active_count() - threads
        stats = backend.stats().engine
    half = samples[len(samples) // 2 - 1]
    print(f"soak {SOAK_S:.0f} s: {len(outcomes)} requests, RSS {rss / 2**20:.0f} MiB -> +{grown[0]:.1f} MiB "
          f"(+{half:.1f} at half time; every tenth: {samples}), fds +{grown[1]}, threads +{grown[2]}")
    assert len(outcomes) > SOAK_S and all(o == (200, 6 * 1920 * 2) for o in outcomes)
    # asyncio's default executor (text splitting) starts threads lazily up to its cap: bounded, not a leak
    executor_cap = min(32, (os.cpu_count() or 1) + 4)
    assert grown[0] < 64 and grown[0] - half < 16 and grown[1] <= 4 and grown[2] <= executor_cap
    assert stats.num_kv_slots_used == 0 and stats.num_waiting == 0
