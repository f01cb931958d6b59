"""A failing engine step, seen over HTTP: the requests in that step fail with an OpenAI-style
5xx (no trace), the server keeps serving, and no slot is left behind."""

import threading
import time

import httpx

from tests.local_server import local_server


def test_a_failing_engine_step_fails_its_requests_and_the_server_keeps_serving(tmp_path):
    with local_server(str(tmp_path)) as (url, backend):
        runner = backend.pipeline.engine.engine.runner
        real_execute, calls = runner.execute, []

        def flaky_execute(sched):
            calls.append(len(sched.decodes) + len(sched.prefills))
            if len(calls) == 3:
                raise RuntimeError("simulated device error")
            return real_execute(sched)

        runner.execute = flaky_execute
        body = {"model": "tts-1", "voice": "alloy", "input": "Fault.", "response_format": "pcm",
                "max_audio_seconds": 0.24}
        results = [None] * 3

        def one(i):
            results[i] = httpx.post(url + "/v1/audio/speech", json={**body, "seed": i}, timeout=60)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        failed = [r for r in results if r.status_code != 200]
        assert failed, [r.status_code for r in results]  # the failing step had requests in it
        for r in failed:
            assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
            assert "simulated" not in r.text and "Traceback" not in r.text
        assert all(len(r.content) == 3 * 1920 * 2 for r in results if r.status_code == 200)
        after = httpx.post(url + "/v1/audio/speech", json={**body, "seed": 9}, timeout=60)
        assert after.status_code == 200 and len(after.content) == 3 * 1920 * 2
        assert httpx.get(url + "/v2/health/ready", timeout=10).status_code == 200
        deadline = time.monotonic() + 10  # a request cut at max_audio_seconds is aborted at the next step
        while backend.pipeline.engine.stats().num_kv_slots_used and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = backend.pipeline.engine.stats()
        assert stats.num_kv_slots_used == 0 and stats.num_waiting == 0
