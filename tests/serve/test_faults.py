"""A failing engine step, seen over HTTP: the requests in that step fail with an OpenAI-style
5xx (no trace), the server keeps serving, and no slot is left behind."""

import time

import httpx

from tests.conftest import fan_out
from tests.local_server import local_server


def _fail_first_step():
    """Fault injection: the engine's first step after warm-up raises, as a device error would.
    The first: a stream's first chunk is one frame, so from the second step on its requests
    have audio out already and would be cut mid-stream instead (tests/deployments/test_errors.py)."""
    calls = []

    def before_step(sched):
        ids = [r.request_id for r in sched.decodes] + [c.request.request_id for c in sched.prefills]
        if "__warm_up__" not in ids:
            calls.append(ids)
        if len(calls) == 1 and "__warm_up__" not in ids:
            raise RuntimeError("simulated device error")

    return before_step


def test_a_failing_engine_step_fails_its_requests_and_the_server_keeps_serving(tmp_path):
    with local_server(str(tmp_path), before_step=_fail_first_step()) as (url, replica):
        body = {"model": "tts-1", "voice": "alloy", "input": "Fault.", "response_format": "pcm",
                "max_audio_seconds": 0.24}
        results = fan_out(lambda i: httpx.post(url + "/v1/audio/speech", json={**body, "seed": i}, timeout=60),
                          range(3))
        failed = [r for r in results if r.status_code != 200]
        assert failed, [r.status_code for r in results]  # the failing step had requests in it
        for r in failed:
            assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
            assert "simulated" not in r.text and "Traceback" not in r.text
            assert r.headers["x-request-id"] in r.json()["error"]["message"]  # for the operator's logs
        assert all(len(r.content) == 3 * 1920 * 2 for r in results if r.status_code == 200)
        after = httpx.post(url + "/v1/audio/speech", json={**body, "seed": 9}, timeout=60)
        assert after.status_code == 200 and len(after.content) == 3 * 1920 * 2
        assert httpx.get(url + "/v2/health/ready", timeout=10).status_code == 200
        deadline = time.monotonic() + 10
        while replica.stats().engine.num_kv_slots_used and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = replica.stats().engine
        assert stats.num_kv_slots_used == 0 and stats.num_waiting == 0


def test_a_dead_engine_answers_503_with_retry_after(tmp_path):
    """An engine whose loop has stopped cannot serve: 503 (retry elsewhere or later), not 500,
    and readiness drops so the balancer stops sending traffic."""
    with local_server(str(tmp_path)) as (url, replica):
        replica.shutdown()
        r = httpx.post(url + "/v1/audio/speech", timeout=30, json={
            "model": "tts-1", "voice": "alloy", "input": "Anyone there?", "response_format": "pcm"})
        assert r.status_code == 503 and r.headers["retry-after"]
        error = r.json()["error"]
        assert error["type"] == "service_unavailable" and error["code"] == "engine_unavailable"
        assert httpx.get(url + "/v2/health/ready", timeout=10).status_code == 503
