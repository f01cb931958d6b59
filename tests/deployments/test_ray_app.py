"""The Ray Serve application on loopback, driven by the official openai client; metrics
scraped by a real Prometheus. Reliability is in test_ray_reliability.py."""

import base64
import json
import shutil
import subprocess
import time

import httpx
import numpy as np
import openai
import pytest
import yaml

from serve.audio import FORMATS, decode_audio
from tests.conftest import fan_out, free_port, wav_bytes
from tests.deployments.conftest import replica_stats

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def metrics_port(ray_serve):
    return ray_serve.metrics_port


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_through_ray(app_url, fmt):
    client = openai.OpenAI(base_url=app_url + "/v1", api_key="x", max_retries=0)
    audio = client.audio.speech.create(model="tts-1", voice="coral", input="Every format.", response_format=fmt,
                                       extra_body={"seed": 5, "max_audio_seconds": 0.48}).read()
    if fmt in ("mulaw", "alaw"):  # raw G.711: 8 kHz, one byte a sample
        assert len(audio) == 0.48 * 8000
        return
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
    before = replica_stats()

    def one(i):
        client = openai.OpenAI(base_url=app_url + "/v1", api_key="x", max_retries=8)
        return client.audio.speech.create(model="tts-1", voice="echo", input=f"Request {i}.",
                                          response_format="pcm", extra_body={"seed": i, "max_audio_seconds": 0.8}).read()

    results = fan_out(one, range(16))
    assert all(r is not None and len(r) == 10 * 1920 * 2 for r in results)
    after = replica_stats()
    frames = after.engine.num_frames_total - before.engine.num_frames_total
    steps = after.engine.num_steps - before.engine.num_steps
    assert frames / steps > 1.5  # average batch size


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
    fan_out(lambda i: httpx.post(app_url + "/v1/audio/speech", timeout=120, json={
        "model": "tts-1", "voice": "alloy", "input": f"Metric {i}.", "response_format": "pcm",
        "seed": seed + i, "max_audio_seconds": 0.8}), range(n))


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
        "transport": 'histogram_quantile(0.95, sum by (le) (rate(ray_tts_stage_seconds_bucket{stage="transport"}[1m])))',
    }
    voice = httpx.post(app_url + "/v1/audio/voices", data={"name": "Metrics", "transcript": "Counted words."},
                       files={"audio_sample": ("s.wav", wav_bytes(1.0), "audio/wav")}, timeout=120)
    assert voice.status_code == 200, voice.text  # its prefix is computed: a context cache lookup
    conversation = httpx.post(app_url + "/v1/audio/conversations", timeout=30).json()["id"]  # counted
    turn = {"model": "tts-1", "voice": "alloy", "input": "A turn.", "conversation": conversation, "seed": 1,
            "max_audio_seconds": 0.24}
    for _ in range(2):  # the first computes nothing (no context yet); the second reuses the first turn's prefix
        assert httpx.post(app_url + "/v1/audio/speech", json=turn, timeout=120).status_code == 200
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
    assert 0 <= values["transport"] < 10  # replica to ingress, one chunk
    exprs = [concrete(e) for _, _, targets in PANELS for _, e in targets] + [a["value"] for a in ALERTS]
    empty = [e for e in exprs if not _query(prometheus, e)]
    assert not empty, empty




def test_serve_config_builds_through_serves_own_builder_call(app_args):
    """`serve run serve_config.yaml` calls the import path's builder the way this does: it
    must take exactly one parameter (the args), or `make serve` fails before starting."""
    from pathlib import Path

    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from deployments.app import build_app

    config = yaml.safe_load(Path("serve_config.yaml").read_text())["applications"][0]
    assert config["import_path"] == "deployments.app:build_app"
    app = call_user_app_builder_with_args_if_necessary(build_app, {**config["args"], **app_args})
    assert type(app).__name__ == "Application"


def test_a_batch_through_ray_equals_its_items_alone(app_url):
    """The batch route runs on the ingress; each item crosses the handle to an engine replica at
    batch priority, as a single request does: the same seed gives the same audio."""
    items = [{"input": "One through Ray.", "seed": 21}, {"input": "Two through Ray.", "seed": 22, "sample_rate": 8000}]
    r = httpx.post(app_url + "/v1/audio/speech/batch", timeout=120,
                   json={"response_format": "pcm", "max_audio_seconds": 0.48, "items": items})
    assert r.status_code == 200 and r.json()["succeeded"] == 2, r.text
    for item, result in zip(items, r.json()["results"], strict=True):
        alone = httpx.post(app_url + "/v1/audio/speech", timeout=60, json={
            "model": "tts-1", "voice": "alloy", "response_format": "pcm", "max_audio_seconds": 0.48, **item}).content
        got = np.frombuffer(base64.b64decode(result["audio_data"]), "<i2").astype(int)
        want = np.frombuffer(alone, "<i2").astype(int)
        assert len(got) == len(want) == 0.48 * item.get("sample_rate", 24_000)
        assert np.abs(got - want).max() <= 2
