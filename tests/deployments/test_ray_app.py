"""The Ray Serve application on loopback, driven by the official openai client."""

import base64
import json
import os
import shutil
import signal
import subprocess
import threading
import time

import httpx
import numpy as np
import openai
import pytest
import yaml

from tests.conftest import free_port
from serve.audio import FORMATS, decode_audio

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

from deployments.app import build_app  # noqa: E402


@pytest.fixture(scope="module")
def metrics_port():
    return free_port()


@pytest.fixture(scope="module")
def app_args(tmp_path_factory):
    return {
        "engine": {"model": "csm-tiny", "device": "cpu", "dtype": "float32", "max_num_seqs": 4},
        "server": {"voices_dir": str(tmp_path_factory.mktemp("voices"))},
        "cpus_per_engine": 1,
        "max_queued_requests": 2,
    }


@pytest.fixture(scope="module")
def app_url(app_args, metrics_port):
    port = free_port()
    ray.init(num_cpus=4, include_dashboard=False, configure_logging=False, _metrics_export_port=metrics_port,
             _system_config={"metrics_report_interval_ms": 1000})
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(app_args), name="csm", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_through_ray(app_url, fmt):
    client = openai.OpenAI(base_url=app_url + "/v1", api_key="x", max_retries=0)
    audio = client.audio.speech.create(model="tts-1", voice="coral", input="Every format.", response_format=fmt,
                                       extra_body={"seed": 5, "max_audio_seconds": 0.48}).read()
    pcm = np.frombuffer(audio, "<i2") if fmt == "pcm" else decode_audio(audio)  # decode_audio: 24 kHz mono
    assert 0.40 < len(pcm) / 24_000 < 0.70


def test_sse_through_ray_equals_plain_pcm(app_url):
    body = {"model": "tts-1", "voice": "onyx", "input": "Events.", "response_format": "pcm",
            "seed": 8, "max_audio_seconds": 0.48}
    plain = httpx.post(app_url + "/v1/audio/speech", json=body, timeout=60).content
    events = []
    with httpx.stream("POST", app_url + "/v1/audio/speech", json={**body, "stream_format": "sse"}, timeout=60) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1]["type"] == "speech.audio.done"
    streamed = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
    a, b = np.frombuffer(plain, "<i2").astype(int), np.frombuffer(streamed, "<i2").astype(int)
    assert len(a) == len(b) == 6 * 1920 and np.abs(a - b).max() <= 2  # same codes; PCM up to float rounding


def _engine_stats() -> dict:
    return serve.get_deployment_handle("TTSEngine", app_name="csm").stats.remote().result()


def test_speech_through_ray(app_url):
    client = openai.OpenAI(base_url=app_url + "/v1", api_key="x", max_retries=0)
    audio = client.audio.speech.create(model="tts-1", voice="alloy", input="Through Ray Serve.",
                                       response_format="wav", extra_body={"seed": 1, "max_audio_seconds": 0.48}).read()
    assert len(decode_audio(audio)) == 6 * 1920
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input="Streamed through Ray.", response_format="pcm",
        extra_body={"seed": 2, "max_audio_seconds": 1.6},
    ) as response:
        chunks = [c for c in response.iter_bytes() if c]
    assert len(chunks) >= 2 and sum(map(len, chunks)) == 20 * 1920 * 2


def test_16_concurrent_requests_all_complete_batched(app_url):
    """More clients than slots + queue: the SDK retries 429s (honouring Retry-After), every
    request completes with the right audio, and requests shared forward passes."""
    before = _engine_stats()
    results = [None] * 16

    def one(i):
        client = openai.OpenAI(base_url=app_url + "/v1", api_key="x", max_retries=8)
        results[i] = client.audio.speech.create(model="tts-1", voice="echo", input=f"Request {i}.",
                                                response_format="pcm", extra_body={"seed": i, "max_audio_seconds": 0.8}).read()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert all(r is not None and len(r) == 10 * 1920 * 2 for r in results)
    after = _engine_stats()
    frames = after["num_frames_total"] - before["num_frames_total"]
    steps = after["num_steps"] - before["num_steps"]
    assert frames / steps > 1.5  # average batch size


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
        for actor in ("SpeechIngress", "TTSEngine", "ProxyActor"):
            if name.startswith("ray::") and actor in name:
                pids[actor] = int(entry)
    return pids


def _overload_burst(http: httpx.Client, url: str, n: int, probes: int) -> tuple[list, list]:
    """n simultaneous 4 s requests, then `probes` sequential requests while the engine is
    still full. Returns ([(status, seconds, response)] for the burst, same for the probes)."""
    outcomes = [None] * n

    def one(i):
        t0 = time.perf_counter()
        r = http.post(url, json={"model": "tts-1", "voice": "alloy", "input": f"Load {i}.", "response_format": "pcm",
                                 "seed": i, "max_audio_seconds": 4.0})
        outcomes[i] = (r.status_code, time.perf_counter() - t0, r)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    probed = []
    for i in range(probes):
        t0 = time.perf_counter()
        r = http.post(url, json={"model": "tts-1", "voice": "alloy", "input": f"Probe {i}.", "response_format": "pcm"})
        probed.append((r.status_code, time.perf_counter() - t0, r))
    for t in threads:
        t.join(300)
    return outcomes, probed


def test_overload_gets_429_quickly_and_admitted_requests_finish(app_url):
    """4x the capacity (4 slots + 2 queued) at once: the excess is refused with 429 +
    Retry-After + an OpenAI error body within 100 ms, the admitted ones complete with all
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
    assert len(refused) + len(served) == 24, [(o[0], o[2].text[:200]) for o in outcomes]  # nothing failed or lost
    assert len(refused) >= 12 and len(served) >= 6  # slots freed during the burst admit a few more
    for status, seconds, r in refused + probes:
        assert status == 429 and r.headers["retry-after"] and r.json()["error"]["type"] == "rate_limit_error"
    assert all(len(o[2].content) == 50 * 1920 * 2 for o in served)
    burst_s = sorted(o[1] for o in refused)
    probe_s = sorted(o[1] for o in probes)
    print(f"overload: 24 sent, {len(served)} ok, {len(refused)} rejected; rejection burst p50 "
          f"{burst_s[len(burst_s) // 2] * 1e3:.0f} ms max {burst_s[-1] * 1e3:.0f} ms, while full p50 "
          f"{probe_s[len(probe_s) // 2] * 1e3:.0f} ms max {probe_s[-1] * 1e3:.0f} ms")
    assert probe_s[len(probe_s) // 2] < 0.1 and burst_s[len(burst_s) // 2] < 0.25 and burst_s[-1] < 1.0
    deadline = time.time() + 15
    while _engine_stats()["num_kv_slots_used"] and time.time() < deadline:
        time.sleep(0.2)
    stats = _engine_stats()
    assert stats["num_kv_slots_used"] == 0 and stats["num_waiting"] == 0 and stats["num_running"] == 0
    rss_after = {name: _rss_mib(pid) for name, pid in pids.items()}
    print("RSS MiB before/after the second burst:", {n: f"{rss_before[n]:.0f}/{rss_after[n]:.0f}" for n in pids})
    assert set(pids) >= {"SpeechIngress", "TTSEngine"}
    assert all(rss_after[n] - rss_before[n] < 32 for n in pids), (rss_before, rss_after)


def test_disconnect_frees_the_slot(app_url):
    with httpx.stream("POST", app_url + "/v1/audio/speech", timeout=60, json={
        "model": "tts-1", "voice": "alloy", "input": "A long answer " * 20, "response_format": "pcm",
    }) as r:
        next(r.iter_bytes())
    deadline = time.time() + 15
    while _engine_stats()["num_kv_slots_used"] and time.time() < deadline:
        time.sleep(0.2)
    assert _engine_stats()["num_kv_slots_used"] == 0


@pytest.fixture(scope="module")
def prometheus(app_url, metrics_port, tmp_path_factory):
    """Debian's prometheus on loopback, scraping Ray's metrics agent every second."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus (Debian package) is not installed")
    tmp = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    (tmp / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "ray", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
    }))
    proc = subprocess.Popen([binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if httpx.get(url + "/-/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    yield url
    proc.terminate()
    proc.wait(10)


def _query(prom: str, expr: str) -> list:
    r = httpx.get(prom + "/api/v1/query", params={"query": expr}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["data"]["result"]


def _burst(app_url: str, n: int, seed: int) -> None:
    def one(i):
        httpx.post(app_url + "/v1/audio/speech", timeout=120, json={
            "model": "tts-1", "voice": "alloy", "input": f"Metric {i}.", "response_format": "pcm",
            "seed": seed + i, "max_audio_seconds": 0.8})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)


def test_prometheus_scrape_dashboard_and_alert_queries(app_url, prometheus):
    """A real Prometheus scraping the running app: RTF p95, time to first audio p95, device
    memory and batch size have plausible values, and every dashboard and alert expression
    returns at least one series."""
    from observability.queries import ALERTS, PANELS
    from tests.observability.test_rules import concrete

    checks = {
        "rtf": "histogram_quantile(0.95, sum by (le) (rate(ray_tts_real_time_factor_bucket[1m])))",
        "ttfa": "histogram_quantile(0.95, sum by (le) (rate(ray_tts_time_to_first_audio_seconds_bucket[1m])))",
        "memory": 'max(ray_tts_device_memory_used_bytes{device="cpu"})',
        "batch": "histogram_quantile(0.95, sum by (le) (rate(ray_tts_engine_batch_size_bucket[1m])))",
    }
    values = {}
    deadline, seed = time.time() + 120, 100
    while time.time() < deadline and len(values) < len(checks):
        _burst(app_url, 3, seed)  # keep traffic flowing: rate() needs increases across scrapes
        seed += 3
        for name, expr in checks.items():
            result = _query(prometheus, expr)
            if result and result[0]["value"][1] not in ("NaN", "+Inf"):
                values[name] = float(result[0]["value"][1])
        time.sleep(1)
    assert set(values) == set(checks), values
    assert 0 < values["rtf"] < 100 and 0 < values["ttfa"] < 60
    assert 10 * 2**20 < values["memory"] < 1 << 40 and values["batch"] >= 1
    exprs = [concrete(e) for _, _, targets in PANELS for _, e in targets] + [a["value"] for a in ALERTS]
    empty = [e for e in exprs if not _query(prometheus, e)]
    assert not empty, empty


def test_clients_vanishing_before_during_and_after_generation_leak_nothing(app_url):
    """Clients that give up before the first byte, mid-stream, or right after the end leave
    no slot, queued request or thread behind."""
    body = {"model": "tts-1", "voice": "alloy", "input": "Going away.", "response_format": "pcm", "max_audio_seconds": 3}
    threads_before = _engine_stats()["num_threads"]
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
        stats = _engine_stats()
        if stats["num_kv_slots_used"] == 0 and stats["num_waiting"] == 0:
            break
        time.sleep(0.2)
    stats = _engine_stats()
    assert stats["num_kv_slots_used"] == 0 and stats["num_waiting"] == 0 and stats["num_running"] == 0
    assert stats["num_threads"] <= threads_before + 2  # no thread per request left behind


def test_redeploy_drains_in_flight_requests(app_url, app_args):
    """`serve.run` of a changed config replaces the engine replica; a request streaming at
    that moment still completes in full (graceful shutdown), and new requests succeed."""
    old_pid = _engine_stats()["pid"]
    result = {}

    def long_request():
        r = httpx.post(app_url + "/v1/audio/speech", timeout=120, json={
            "model": "tts-1", "voice": "alloy", "input": "Still talking " * 10, "response_format": "pcm",
            "seed": 4, "max_audio_seconds": 12})
        result["status"], result["bytes"] = r.status_code, len(r.content)

    thread = threading.Thread(target=long_request)
    thread.start()
    time.sleep(1.0)
    changed = {**app_args, "engine": {**app_args["engine"], "max_prefill_tokens": 256}}
    serve.run(build_app(changed), name="csm", route_prefix="/")
    thread.join(120)
    assert result == {"status": 200, "bytes": 150 * 1920 * 2}
    assert _engine_stats()["pid"] != old_pid
    client = openai.OpenAI(base_url=app_url + "/v1", api_key="x", max_retries=2)
    assert len(client.audio.speech.create(model="tts-1", voice="alloy", input="New config.", response_format="pcm",
                                          extra_body={"max_audio_seconds": 0.48}).read()) == 6 * 1920 * 2


def test_killed_engine_replica_fails_streams_fast_and_is_replaced(app_url):
    """Kill the engine replica's process mid-stream: the stream ends with an error promptly,
    readiness drops while Serve replaces the replica, and the next requests succeed."""
    old_pid = _engine_stats()["pid"]
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
                new_pid = serve.get_deployment_handle("TTSEngine", app_name="csm").stats.remote().result(timeout_s=5)["pid"]
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
