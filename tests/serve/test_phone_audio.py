"""Output sample rates and phone audio (G.711) on every edge, against a real csm-serve on
loopback (uvicorn, in-process engine, csm-tiny): the openai client, the text-in socket, v2 with
tritonclient (HTTP and gRPC) and Wyoming. Each is checked against the same request at 24 kHz
(same seed), resampled in one go by libswresample."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import av
import httpx
import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from websockets.sync.client import connect
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.tts import Synthesize

from replica.config import ReplicaConfig
from tests.local_server import local_server
from tests.serve.test_audio_rates import read
from tests.serve.test_audio_rates import resampled as _resampled
from tests.wyoming_server import wyoming_client

SECONDS = 0.96  # 12 frames: the tiny model never says EOS
EXTRA = {"seed": 11, "temperature": 0, "max_audio_seconds": SECONDS}
TEXT = "Your appointment is confirmed for Tuesday."


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # the shipped replica settings (real-time admission on), as make serve runs them
    with local_server(str(tmp_path_factory.mktemp("voices")), replica=ReplicaConfig()) as running:
        yield running


@pytest.fixture(scope="module")
def reference(server) -> np.ndarray:
    """The 24 kHz audio of the request every test makes, as float."""
    body = {"model": "tts-1", "voice": "alloy", "input": TEXT, "response_format": "pcm", **EXTRA}
    pcm = httpx.post(server[0] + "/v1/audio/speech", json=body, timeout=60).content
    return np.frombuffer(pcm, "<i2").astype(np.float32) / 32767.0


def resampled(signal: np.ndarray, rate: int) -> np.ndarray:
    """At `rate` and full scale: resampling full-scale noise (the tiny model's audio) overshoots
    1.0, which any 16-bit or G.711 encoder clips."""
    return np.clip(_resampled(signal, rate), -1.0, 1.0)


def g711(data: bytes, fmt: str, rate: int) -> np.ndarray:
    """Raw G.711 bytes decoded by ffmpeg's own decoder, as float."""
    return read(fmt, data, rate)[0]


def snr_db(want: np.ndarray, got: np.ndarray) -> float:
    assert len(got) == len(want), (len(got), len(want))
    return float(10 * np.log10(np.sum(want**2) / max(np.sum((got - want) ** 2), 1e-12)))


@pytest.mark.parametrize("fmt", ["mulaw", "alaw"])
def test_phone_audio_through_the_openai_client(server, reference, fmt):
    client = openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0)
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=TEXT, response_format=fmt, extra_body=EXTRA) as response:
        content_type = response.headers["content-type"]
        data = response.read()
    assert content_type == ("audio/PCMU" if fmt == "mulaw" else "audio/PCMA") + ";rate=8000"
    assert len(data) == SECONDS * 8000  # 8000 samples a second, one byte each
    assert snr_db(resampled(reference, 8000), g711(data, fmt, 8000)) > 30  # G.711's quantisation only


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
def test_pcm_at_each_rate_is_the_24k_audio_resampled(server, reference, rate):
    client = openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0)
    data = client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format="pcm",
                                      extra_body={**EXTRA, "sample_rate": rate}).read()
    got = np.frombuffer(data, "<i2").astype(np.float32) / 32767.0
    want = resampled(reference, rate)
    assert len(got) == len(want) and np.abs(got - want).max() <= 3 / 32767


def test_wav_and_mp3_carry_the_rate_in_their_headers(server):
    for fmt in ("wav", "mp3", "flac"):
        body = {"model": "tts-1", "voice": "alloy", "input": TEXT, "response_format": fmt, "sample_rate": 16000, **EXTRA}
        data = httpx.post(server[0] + "/v1/audio/speech", json=body, timeout=60).content
        with av.open(io.BytesIO(data)) as f:
            assert f.streams.audio[0].codec_context.sample_rate == 16000, fmt


def test_sse_usage_stays_in_frames_at_another_rate(server):
    body = {"model": "tts-1", "voice": "alloy", "input": TEXT, "response_format": "mulaw", "stream_format": "sse", **EXTRA}
    with httpx.stream("POST", server[0] + "/v1/audio/speech", json=body, timeout=60) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    audio = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
    assert len(audio) == SECONDS * 8000 and events[-1]["usage"]["output_tokens"] == 12


def test_the_socket_sends_phone_audio_with_timestamps_in_seconds(server, reference):
    url = server[0].replace("http", "ws", 1) + "/v1/audio/speech/stream"
    with connect(url, subprotocols=["csm-serve"], open_timeout=30) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
        session = {"response_format": "mulaw", "sample_rate": 8000, "audio_transport": "binary", **EXTRA}
        ws.send(json.dumps({"type": "session.update", "session": session}))
        assert json.loads(ws.recv(timeout=10))["session"]["sample_rate"] == 8000
        ws.send(json.dumps({"type": "input_text_buffer.append", "text": TEXT}))
        ws.send(json.dumps({"type": "input_text_buffer.commit"}))
        audio, events = bytearray(), []
        while not events or events[-1]["type"] != "response.done":
            message = ws.recv(timeout=60)
            if isinstance(message, bytes):
                assert audio or message  # binary frames: whole G.711 samples, any length
                audio += message
            else:
                events.append(json.loads(message))
        ws.send(json.dumps({"type": "session.update", "session": {"response_format": "opus", "sample_rate": 22050}}))
        error = json.loads(ws.recv(timeout=10))
    segment = next(e for e in events if e["type"] == "response.segment.done")
    assert (segment["start_s"], segment["end_s"]) == (0, pytest.approx(SECONDS))  # seconds of audio, not samples
    assert snr_db(resampled(reference, 8000), g711(bytes(audio), "mulaw", 8000)) > 30
    assert error["type"] == "error" and error["error"]["param"] == "session.sample_rate", error


def test_v2_sample_rate_parameter_over_http_and_grpc(server, reference):
    host = server[0].removeprefix("http://")
    want = resampled(reference, 16000)
    params = {"seed": 11, "temperature": 0, "max_audio_seconds": SECONDS, "sample_rate": 16000}
    for module, url in ((httpclient, host), (grpcclient, f"127.0.0.1:{server[1].grpc_port}")):
        text = module.InferInput("text", [1], "BYTES")
        text.set_data_from_numpy(np.array([TEXT.encode()], dtype=object))
        with module.InferenceServerClient(url) as client:
            result = client.infer("tts-1", [text], parameters=params)
        audio = result.as_numpy("audio")
        assert len(audio) == len(want) and np.abs(audio - want).max() < 1e-3, module.__name__
        got_rate = (result.get_response()["parameters"]["sample_rate"] if module is httpclient
                    else result.get_response().parameters["sample_rate"].int64_param)
        assert got_rate == 16000
    bad = httpx.post(server[0] + "/v2/models/tts-1/infer", timeout=30, json={
        "parameters": {"sample_rate": 11025}, "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]})
    assert bad.status_code == 400 and "sample_rate" in bad.json()["error"]


def test_wyoming_at_16k(server, reference):
    async def go():
        async with wyoming_client(server[0], sample_rate=16000, max_audio_seconds=SECONDS) as client:
            await client.write_event(Synthesize(text=TEXT).event())
            start, chunks = None, []
            while True:
                event = await asyncio.wait_for(client.read_event(), 60)
                if AudioStart.is_type(event.type):
                    start = AudioStart.from_event(event)
                elif AudioChunk.is_type(event.type):
                    chunks.append(AudioChunk.from_event(event))
                elif AudioStop.is_type(event.type):
                    return start, chunks

    start, chunks = asyncio.run(go())
    assert start.rate == 16000 and all(c.rate == 16000 for c in chunks)
    assert sum(len(c.audio) for c in chunks) == len(resampled(reference, 16000)) * 2
