"""The OpenAI contract over real HTTP on loopback: uvicorn serving the app with the
in-process backend (csm-tiny), driven by the official openai client and httpx."""

import asyncio
import base64
import json

import httpx
import numpy as np
import openai
import pytest

from serve.app import create_app
from serve.audio import FORMATS, decode_audio
from serve.settings import ServerSettings
from stores.voices import VoiceStore
from tests.conftest import fan_out, wav_bytes
from tests.local_server import local_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with local_server(str(tmp_path_factory.mktemp("voices"))) as running:
        yield running


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0)


EXTRA = {"seed": 7, "max_audio_seconds": 0.48}  # 6 frames: the tiny model never says EOS


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_decodes_to_the_right_audio(client, fmt):
    audio = client.audio.speech.create(model="tts-1", voice="alloy", input="Hello there.", response_format=fmt,
                                       extra_body=EXTRA).read()
    if fmt == "pcm":
        pcm = np.frombuffer(audio, "<i2")
        assert len(pcm) == 6 * 1920
    elif fmt in ("mulaw", "alaw"):  # raw G.711: 8 kHz, one byte a sample
        assert len(audio) == 6 * 1920 // 3
    else:
        pcm = decode_audio(audio)
        assert 0.40 < len(pcm) / 24_000 < 0.70  # 0.48 s, plus codec padding for lossy formats


def test_streaming_response_arrives_in_several_chunks(client):
    with client.audio.speech.with_streaming_response.create(
        model="csm-1b", voice="echo", input="Streaming as it is generated.", response_format="pcm",
        extra_body={"seed": 3, "max_audio_seconds": 2.0},
    ) as response:
        assert response.headers["content-type"].startswith("audio/pcm")
        chunks = [c for c in response.iter_bytes() if c]
    assert len(chunks) >= 3 and sum(map(len, chunks)) == 25 * 1920 * 2


def test_sse_audio_equals_plain_pcm_for_the_same_seed(server, client):
    body = {"model": "tts-1", "voice": "nova", "input": "Same seed, same audio.", "response_format": "pcm", **EXTRA}
    plain = client.audio.speech.create(**{k: body[k] for k in ("model", "voice", "input", "response_format")},
                                       extra_body=EXTRA).read()
    events = []
    with httpx.stream("POST", server[0] + "/v1/audio/speech", json={**body, "stream_format": "sse"}, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert events[-1]["type"] == "speech.audio.done" and events[-1]["usage"]["output_tokens"] == 6
    assert b"".join(base64.b64decode(e["audio"]) for e in events[:-1]) == plain


def test_models_list(client):
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == "csm-1b" and "tts-1" in ids


def test_custom_voice_lifecycle(server, client):
    url = server[0]
    r = httpx.post(url + "/v1/audio/voices", data={"name": "Narrator", "transcript": "Hello, it is me."},
                   files={"audio_sample": ("s.wav", wav_bytes(1.5), "audio/wav")}, timeout=60)
    assert r.status_code == 200, r.text
    voice = r.json()
    assert voice["object"] == "audio.voice" and voice["name"] == "Narrator" and voice["id"].startswith("voice_")
    assert voice["id"] in [v["id"] for v in httpx.get(url + "/v1/audio/voices").json()["data"]]
    for ref in ({"id": voice["id"]}, voice["id"]):
        audio = client.audio.speech.create(model="tts-1", voice=ref, input="In my voice.", response_format="wav",
                                           extra_body=EXTRA).read()
        assert len(decode_audio(audio)) == 6 * 1920
    assert server[1].stats().engine.num_prefix_hits >= 2
    assert httpx.delete(url + f"/v1/audio/voices/{voice['id']}").status_code == 200
    assert httpx.delete(url + f"/v1/audio/voices/{voice['id']}").status_code == 404


BAD = [
    (b"{not json", 400, None),
    ({"voice": "alloy", "input": "x"}, 400, "model"),
    ({"model": "tts-1", "voice": "alloy"}, 400, "input"),
    ({"model": "tts-1", "voice": "alloy", "input": "   "}, 400, "input"),
    ({"model": "tts-1", "voice": "alloy", "input": "x" * 4097}, 400, "input"),
    ({"model": "tts-1", "voice": "nobody", "input": "x"}, 400, "voice"),
    ({"model": "tts-1", "voice": "alloy", "input": "x", "response_format": "ogg"}, 400, "response_format"),
    ({"model": "tts-1", "voice": "alloy", "input": "x", "speed": 5}, 400, "speed"),
    ({"model": "tts-1", "voice": "alloy", "input": "x", "speed": "fast"}, 400, "speed"),
    ({"model": "tts-1", "voice": "alloy", "input": "x", "speed": True}, 400, "speed"),  # true is not 1
    ({"model": "tts-1", "voice": "alloy", "input": "x", "temperature": True}, 400, "temperature"),
    ({"model": "tts-1", "voice": "alloy", "input": "x", "seed": False}, 400, "seed"),
    ({"model": "tts-1", "voice": "alloy", "input": "x", "bogus": 1}, 400, "bogus"),
    ({"model": "tts-1", "voice": "alloy", "input": "x", "sample_rate": 12345}, 400, "sample_rate"),
    ({"model": "tts-1", "voice": "alloy", "input": "x", "sample_rate": "fast"}, 400, "sample_rate"),
    ({"model": "tts-1", "voice": "alloy", "input": "x", "response_format": "opus", "sample_rate": 44100}, 400,
     "sample_rate"),
    ({"model": "tts-1", "voice": "alloy", "input": "x", "response_format": "ulaw"}, 400, "response_format"),
    ({"model": "tts-1", "voice": 5, "input": "x"}, 400, "voice"),
    ({"model": "nope", "voice": "alloy", "input": "x"}, 404, "model"),
    ({"model": "tts-1", "voice": {"id": "voice_0000000000000000"}, "input": "x"}, 400, "voice"),
]


@pytest.mark.parametrize("body, status, param", BAD)
def test_bad_requests_get_openai_errors(server, body, status, param):
    kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(server[0] + "/v1/audio/speech", timeout=30, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param:
        assert param in (error["param"] or "")
    assert httpx.get(server[0] + "/health").status_code == 200  # still serving


def test_health_routes(server):
    assert httpx.get(server[0] + "/health").json() == {"status": "ok"}
    assert httpx.get(server[0] + "/v2/health/live").json() == {"live": True}  # the Open Inference Protocol's bodies
    ready = httpx.get(server[0] + "/v2/health/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True}


def test_api_keys_are_required_when_configured(server):
    settings = ServerSettings(api_keys=["k1", "k2"])
    app = create_app(server[1], VoiceStore(None), settings)

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            assert (await c.get("/v1/models")).status_code == 401
            assert (await c.get("/v1/models", headers={"Authorization": "Bearer nope"})).status_code == 401
            assert (await c.get("/v1/models", headers={"Authorization": "Bearer k2"})).status_code == 200
            assert (await c.get("/health")).status_code == 200

    asyncio.run(run())


def test_same_seed_same_audio_idle_or_busy(server):
    """With a seed, a request returns identical audio alone and among concurrent others."""
    body = {"model": "tts-1", "voice": "sage", "input": "Deterministic under load.", "response_format": "pcm",
            "seed": 99, "max_audio_seconds": 0.8}
    alone = httpx.post(server[0] + "/v1/audio/speech", json=body, timeout=60).content

    def one(i):
        other = {**body, "seed": i, "input": f"Someone else {i}."}
        return httpx.post(server[0] + "/v1/audio/speech", json=body if i == 0 else other, timeout=120).content

    busy = fan_out(one, range(4))
    a, b, other = (np.frombuffer(x, "<i2").astype(int) for x in (alone, busy[0], busy[1]))
    assert len(a) == len(b) == 10 * 1920
    assert np.abs(a - b).max() <= 2  # same codes; PCM equal up to float rounding (1-2 LSB of int16)
    assert np.abs(a - other).max() > 100  # a different request really differs


def test_cli_say_writes_a_file(tmp_path):
    from deployments.cli import main

    out = tmp_path / "hello.wav"
    assert main(["say", "Hello there. A second sentence.", "-o", str(out), "--seed", "1", "--max-frames", "5",
                 "--device", "cpu"]) == 0
    assert len(decode_audio(out.read_bytes())) == 5 * 1920


def test_metrics_endpoint_reports_requests_latency_engine_and_memory(server, client):
    from prometheus_client.parser import text_string_to_metric_families

    client.audio.speech.create(model="tts-1", voice="alloy", input="Counted.", response_format="wav", extra_body=EXTRA)
    httpx.post(server[0] + "/v1/audio/speech", json={"model": "tts-1", "voice": "nobody", "input": "x"})
    text = httpx.get(server[0] + "/metrics").text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)

    def value(name, **labels):
        return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))

    assert value("tts_requests_total", outcome="ok", format="wav", voice="alloy") >= 1
    assert value("tts_requests_total", outcome="client_error") >= 1 and value("tts_errors_total", code="400") >= 1
    assert value("tts_time_to_first_audio_seconds_count") >= 1 and value("tts_real_time_factor_count") >= 1
    assert value("tts_audio_seconds_total") >= 0.48 and value("tts_input_characters_total") >= 8
    assert value("tts_engine_batch_size_count") >= 6 and value("tts_engine_step_duration_seconds_sum") > 0
    assert value("tts_audio_frames_total") >= 6 and value("tts_engine_kv_slots_total") == 4
    used, total = value("tts_device_memory_used_bytes", device="cpu"), value("tts_device_memory_total_bytes", device="cpu")
    assert 0 < used < total
    assert value("tts_model_info", model="csm-tiny", device="cpu", card="none") == 1 and value("tts_model_load_seconds") > 0
    # requests capped by max_audio_seconds end in the engine at the cap (length), not aborted by
    # the edge; none here ended by an error
    assert value("tts_engine_requests_finished_total", reason="length") >= 1
    assert value("tts_engine_requests_finished_total", reason="abort") == 0
    assert value("tts_engine_requests_finished_total", reason="error") == 0
    assert value("tts_requests_total", protocol="openai") >= 2
    # the streamed response's listener clock (6 frames: chunks of 1, 2, 2, 1 frames): one
    # min-slack observation per stream; the underrun counter is exported once a gap happens
    assert value("tts_stream_min_slack_seconds_count", protocol="openai") >= 1
