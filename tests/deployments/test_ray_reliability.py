"""Reliability of the Ray Serve application on loopback: overload, disconnects, redeploys
and a killed engine replica; nothing lost, no slot, queue entry or thread left behind."""

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.deployments.conftest import replica_stats

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

from deployments.app import build_app  # noqa: E402


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _serve_pids() -> dict[str, int]:
    """pid of each Serve actor of this test (Ray names their processes `ray::<actor>`)."""
    pids = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                name = f.read().split(b"\0")[0].decode()
        except (OSError, ValueError):
            continue
        for actor in ("SpeechIngress", "SpeechReplica", "ProxyActor"):
            if name.startswith("ray::") and actor in name:
                pids[actor] = int(entry)
    return pids


ROWS = 4  # the test app's max_num_seqs


def _overload_burst(http: httpx.Client, url: str, n: int, probes: int) -> tuple[list, list]:
    """n simultaneous 8 s requests, then `probes` sequential requests while the engine is
    still full (8 s of audio keeps it full for seconds even where it runs 3x faster than real
    time). A burst may get fewer than the engine's rows in (Serve's router promises it only the
    queue's places): before probing, more 8 s requests are sent one at a time until every row
    is taken. Returns ([(status, seconds, response)] for the burst and those, same for the probes)."""
    def one(i):
        t0 = time.perf_counter()
        text = f"Load number {i}, a sentence long enough for eight seconds."  # its default frame cap is over 100
        r = http.post(url, json={"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm",
                                 "seed": i, "max_audio_seconds": 8.0})
        return r.status_code, time.perf_counter() - t0, r

    with ThreadPoolExecutor(max_workers=n + ROWS) as pool:
        sent = [pool.submit(one, i) for i in range(n)]
        time.sleep(0.5)
        deadline = time.monotonic() + 10
        while probes and replica_stats().engine.num_running < ROWS and time.monotonic() < deadline:
            sent.append(pool.submit(one, len(sent)))
            time.sleep(0.3)
        assert not probes or replica_stats().engine.num_running == ROWS, "the engine never filled"
        probed = []
        for i in range(probes):
            t0 = time.perf_counter()
            r = http.post(url, json={"model": "tts-1", "voice": "alloy", "input": f"Probe {i}.", "response_format": "pcm"})
            probed.append((r.status_code, time.perf_counter() - t0, r))
        outcomes = [f.result() for f in sent]
    return outcomes, probed


def test_overload_gets_429_quickly_and_admitted_requests_finish(app_url):
    """4x the capacity (4 slots + 2 queued) at once: the excess is refused with 429 +
    Retry-After + an OpenAI error body (p50 within 250 ms once the engine is full), the admitted ones complete with all
    their audio, nothing is lost, slots and queue go back to 0, and a second burst leaves the
    engine's and the ingress's memory where the first one left it."""
    url = app_url + "/v1/audio/speech"
    with httpx.Client(timeout=300, limits=httpx.Limits(max_connections=64)) as http:  # one client: new
        _overload_burst(http, url, 24, 0)  # httpx clients cost ~15 ms each under the GIL, not the server's time
        pids = _serve_pids()
        rss_before = {name: _rss_mib(pid) for name, pid in pids.items()}
        outcomes, probes = _overload_burst(http, url, 24, 10)
    refused = [o for o in outcomes if o[0] == 429]
    served = [o for o in outcomes if o[0] == 200]
    assert len(refused) + len(served) == len(outcomes) >= 24, [(o[0], o[2].text[:200]) for o in outcomes]  # none lost
    # Serve's router counts a request as queued until it is assigned, even one a free slot will
    # take (its own comment in router.wrap_request_assignment: "we may reject more requests than
    # strictly necessary"): a simultaneous burst is promised the queue's 2 places, not the 4 slots.
    assert len(refused) >= 12 and len(served) >= 2
    for status, seconds, r in refused + probes:
        assert status == 429 and r.headers["retry-after"] and r.json()["error"]["type"] == "rate_limit_error"
    assert all(len(o[2].content) == 100 * 1920 * 2 for o in served)
    burst_s = sorted(o[1] for o in refused)
    probe_s = sorted(o[1] for o in probes)
    print(f"overload: 24 sent, {len(served)} ok, {len(refused)} rejected; rejection burst p50 "
          f"{burst_s[len(burst_s) // 2] * 1e3:.0f} ms max {burst_s[-1] * 1e3:.0f} ms, while full p50 "
          f"{probe_s[len(probe_s) // 2] * 1e3:.0f} ms max {probe_s[-1] * 1e3:.0f} ms")
    # A simultaneous burst is bounded by the HTTP layer's CPU on 2 shared cores: p50 115-136 ms on
    # one machine, 204-315 ms on another, 555 ms on CI (max 631 ms). The bounds catch a refusal that
    # waits for a slot or a timeout (seconds), not the proxy's CPU.
    assert probe_s[len(probe_s) // 2] < 0.25 and burst_s[len(burst_s) // 2] < 1.5 and burst_s[-1] < 3.0
    deadline = time.time() + 15
    while replica_stats().engine.num_kv_slots_used and time.time() < deadline:
        time.sleep(0.2)
    stats = replica_stats()
    assert stats.engine.num_kv_slots_used == 0 and stats.engine.num_waiting == 0 and stats.engine.num_running == 0
    rss_after = {name: _rss_mib(pid) for name, pid in pids.items()}
    print("RSS MiB before/after the second burst:", {n: f"{rss_before[n]:.0f}/{rss_after[n]:.0f}" for n in pids})
    assert set(pids) >= {"SpeechIngress", "SpeechReplica"}
    assert all(rss_after[n] - rss_before[n] < 32 for n in pids), (rss_before, rss_after)


def test_disconnect_frees_the_slot(app_url):
    with httpx.stream("POST", app_url + "/v1/audio/speech", timeout=60, json={
        "model": "tts-1", "voice": "alloy", "input": "A long answer " * 20, "response_format": "pcm",
    }) as r:
        next(r.iter_bytes())
    deadline = time.time() + 15
    while replica_stats().engine.num_kv_slots_used and time.time() < deadline:
        time.sleep(0.2)
    assert replica_stats().engine.num_kv_slots_used == 0


def test_clients_vanishing_before_during_and_after_generation_leak_nothing(app_url):
    """Clients that give up before the first byte, mid-stream, or right after the end leave
    no slot, queued request or thread behind."""
    body = {"model": "tts-1", "voice": "alloy", "input": "Going away.", "response_format": "pcm", "max_audio_seconds": 3}
    threads_before = replica_stats().num_threads
    for _ in range(3):
        with pytest.raises(httpx.TimeoutException):  # before: gone before any audio
            httpx.post(app_url + "/v1/audio/speech", json=body, timeout=httpx.Timeout(0.05, connect=5))
        with httpx.stream("POST", app_url + "/v1/audio/speech", json=body, timeout=30) as r:  # during
            next(r.iter_bytes())
        with httpx.stream("POST", app_url + "/v1/audio/speech", json={**body, "max_audio_seconds": 0.24},
                          timeout=30) as r:  # after: everything was generated, the body is never read
            r.read()
    deadline = time.time() + 20
    while time.time() < deadline:
        stats = replica_stats()
        if stats.engine.num_kv_slots_used == 0 and stats.engine.num_waiting == 0:
            break
        time.sleep(0.2)
    stats = replica_stats()
    assert stats.engine.num_kv_slots_used == 0 and stats.engine.num_waiting == 0 and stats.engine.num_running == 0
    assert stats.num_threads <= threads_before + 2  # no thread per request left behind


def test_redeploy_drains_in_flight_requests(app_url, app_args):
    """`serve.run` of a changed config replaces the engine replica; a request streaming at
    that moment still completes in full (graceful shutdown), and new requests succeed."""
    old_pid = replica_stats().pid

    def long_request():
        r = httpx.post(app_url + "/v1/audio/speech", timeout=120, json={
            "model": "tts-1", "voice": "alloy", "input": "Still talking " * 10, "response_format": "pcm",
            "seed": 4, "max_audio_seconds": 12})
        return {"status": r.status_code, "bytes": len(r.content)}

    with ThreadPoolExecutor(max_workers=1) as pool:
        result = pool.submit(long_request)
        time.sleep(1.0)
        changed = {**app_args, "engine": {**app_args["engine"], "max_prefill_tokens": 256}}
        serve.run(build_app(changed), name="csm", route_prefix="/")
        assert result.result(timeout=120) == {"status": 200, "bytes": 150 * 1920 * 2}
    assert replica_stats().pid != old_pid
    client = openai.OpenAI(base_url=app_url + "/v1", api_key="x", max_retries=2)
    assert len(client.audio.speech.create(model="tts-1", voice="alloy", input="New config.", response_format="pcm",
                                          extra_body={"max_audio_seconds": 0.48}).read()) == 6 * 1920 * 2


def test_killed_engine_replica_fails_streams_fast_and_is_replaced(app_url):
    """Kill the engine replica's process mid-stream: the stream ends with an error promptly,
    readiness drops while Serve replaces the replica, and the next requests succeed."""
    old_pid = replica_stats().pid
    with httpx.stream("POST", app_url + "/v1/audio/speech", timeout=60, json={
        "model": "tts-1", "voice": "alloy", "input": "A long answer " * 20, "response_format": "pcm",
        "max_audio_seconds": 60,
    }) as r:
        chunks = r.iter_bytes()
        received = len(next(chunks))
        os.kill(old_pid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(httpx.HTTPError):
            for chunk in chunks:
                received += len(chunk)
        assert time.monotonic() - t0 < 10 and received < 60 * 24_000 * 2
    saw_unready, new_pid = False, None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready = httpx.get(app_url + "/v2/health/ready", timeout=10).status_code
        saw_unready |= ready == 503
        if ready == 200:
            try:
                new_pid = serve.get_deployment_handle("SpeechReplica", app_name="csm").stats.remote().result(timeout_s=5).pid
            except Exception:
                new_pid = None
            if new_pid and new_pid != old_pid:
                break
        time.sleep(0.2)
    assert saw_unready and new_pid and new_pid != old_pid
    client = openai.OpenAI(base_url=app_url + "/v1", api_key="x", max_retries=2)
    audio = client.audio.speech.create(model="tts-1", voice="alloy", input="Back again.", response_format="pcm",
                                       extra_body={"seed": 1, "max_audio_seconds": 0.48}).read()
    assert len(audio) == 6 * 1920 * 2
