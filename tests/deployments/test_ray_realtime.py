"""Real-time admission through Ray Serve (admission on, as shipped): with the engine replica at
its real-time capacity, every further interactive stream is refused within a second with a
Retry-After from the running stream's remaining audio, and the ingress refuses them itself
(deployments/headroom.py): they never reach the replica's event loop nor Serve's queue. The
replica's steps are made 100 ms longer (the engine's `before_step` seam), so its capacity is
one stream on any machine."""

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.deployments.conftest import replica_stats
from tests.faults import ray_slow_hook

pytestmark = pytest.mark.slow
LONG = "A long answer to hold the only stream there is. " * 6


@pytest.fixture(scope="module")
def slow_app(ray_serve, app_args):
    from tests.ray_serve import deployed

    with deployed(ray_serve, {**app_args, "replica": {"realtime_admission": True}}, ray_slow_hook()) as url:
        yield url


def test_beyond_the_capacity_streams_are_refused_at_the_ingress_within_a_second(slow_app):
    url = slow_app + "/v1/audio/speech"
    body = {"model": "tts-1", "voice": "alloy", "response_format": "pcm"}
    with httpx.Client(timeout=120) as http, http.stream("POST", url, json={**body, "input": LONG}) as held:
        assert held.status_code == 200
        chunks = held.iter_bytes()
        next(chunks)
        deadline = time.monotonic() + 20
        while replica_stats().realtime_capacity != 1:  # its slow steps are seen: one stream is the capacity
            assert time.monotonic() < deadline, replica_stats()
            time.sleep(0.1)
        refused_before = replica_stats().num_refused_streams

        def one(i):
            t0 = time.monotonic()
            r = httpx.post(url, json={**body, "input": f"Refused {i}."}, timeout=30)
            return r, time.monotonic() - t0

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(one, range(12)))
        for r, seconds in answers:
            assert r.status_code == 429 and seconds < 1.0, (r.status_code, seconds, r.text)
            assert r.json()["error"]["code"] == "overloaded" and int(r.headers["retry-after"]) >= 1
        assert max(int(r.headers["retry-after-ms"]) for r, _ in answers) >= 1000  # the held stream's audio left
        assert replica_stats().num_refused_streams - refused_before <= 2  # the ingress refused the rest
        assert replica_stats().num_streams == 1
