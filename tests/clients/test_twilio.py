"""A phone call end to end: a Twilio-shaped caller (websockets, sending what Twilio's Media
Streams send) connects to the example bridge (clients/twilio/bridge.py), which streams the
reply's text into a real csm-serve (uvicorn, in-process engine, csm-tiny) with `mulaw` at 8 kHz
and forwards the audio as Twilio `media` messages. Decoded back, the call's audio is the 24 kHz
stream of the same request resampled, within G.711's quantisation; a barge-in (DTMF `*`) makes
the bridge send `clear` and frees the server's row."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.sync.client import connect as sync_connect

from clients.twilio.bridge import run
from models import EngineConfig
from replica.config import ReplicaConfig
from tests.conftest import free_port, wait_engine_idle
from tests.local_server import local_server
from tests.serve.test_phone_audio import g711, resampled, snr_db

TEXT = "Thanks for calling the clinic. Your appointment is on Tuesday at nine."


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    engine = EngineConfig(model="csm-tiny", device="cpu", max_num_seqs=4, max_frames_cap=12)
    with local_server(str(tmp_path_factory.mktemp("voices")), engine=engine, replica=ReplicaConfig()) as running:
        yield running


def _start(text: str, seed: int) -> str:
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": "MZ0001", "start": {
        "streamSid": "MZ0001", "accountSid": "AC0", "callSid": "CA0001", "tracks": ["inbound"],
        "customParameters": {"text": text, "seed": str(seed), "voice": "alloy"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})


async def _call(api_url: str, text: str, seed: int, barge_in_after: int | None = None) -> list[dict]:
    port = free_port()
    bridge = asyncio.create_task(run(api_url, "127.0.0.1", port))
    try:
        for _ in range(100):
            try:
                twilio = await connect(f"ws://127.0.0.1:{port}")
                break
            except OSError:
                await asyncio.sleep(0.05)
        async with twilio:
            await twilio.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await twilio.send(_start(text, seed))
            got, media = [], 0
            while True:
                message = json.loads(await asyncio.wait_for(twilio.recv(), 60))
                got.append({**message, "at": time.monotonic()})
                media += message["event"] == "media"
                if barge_in_after is not None and message["event"] == "media" and media == barge_in_after:
                    got.append({"event": "barge-in", "at": time.monotonic()})
                    await twilio.send(json.dumps({"event": "dtmf", "streamSid": "MZ0001", "dtmf": {"digit": "*"}}))
                if message["event"] == "mark":
                    await twilio.send(json.dumps({"event": "stop", "streamSid": "MZ0001", "stop": {}}))
                    return got
    finally:
        bridge.cancel()
        await asyncio.wait_for(asyncio.gather(bridge, return_exceptions=True), 10)


def _socket_pcm(url: str, text: str, seed: int) -> np.ndarray:
    """The same reply through csm-serve's socket at 24 kHz pcm: the same words, the same seed."""
    with sync_connect(url.replace("http", "ws", 1) + "/v1/audio/speech/stream", subprotocols=["csm-serve"]) as ws:
        ws.recv(timeout=10)
        ws.send(json.dumps({"type": "session.update", "session": {
            "seed": seed, "voice": "alloy", "response_format": "pcm", "audio_transport": "binary"}}))
        ws.recv(timeout=10)
        for word in text.split(" "):
            ws.send(json.dumps({"type": "input_text_buffer.append", "text": word + " "}))
        ws.send(json.dumps({"type": "input_text_buffer.commit"}))
        audio = bytearray()
        while True:
            message = ws.recv(timeout=60)
            if isinstance(message, bytes):
                audio += message
            elif json.loads(message)["type"] == "response.done":
                return np.frombuffer(bytes(audio), "<i2").astype(np.float32) / 32767.0


def test_the_call_hears_the_24k_stream_resampled_to_phone_audio(server):
    url, replica = server
    messages = asyncio.run(_call(url, TEXT, seed=4))
    media = [m for m in messages if m["event"] == "media"]
    assert media and all(m["streamSid"] == "MZ0001" for m in media) and len(media) > 2  # streamed, not one blob
    assert messages[-1]["event"] == "mark" and messages[-1]["mark"]["name"] == "reply-1-completed"
    call = b"".join(base64.b64decode(m["media"]["payload"]) for m in media)
    want = resampled(_socket_pcm(url, TEXT, seed=4), 8000)
    assert len(call) == len(want)  # 8000 one-byte samples a second
    assert snr_db(want, g711(call, "mulaw", 8000)) > 30
    wait_engine_idle(replica)


def test_a_barge_in_clears_the_call_and_frees_the_row(server):
    url, replica = server
    long_text = " ".join([TEXT] * 6)
    messages = asyncio.run(_call(url, long_text, seed=5, barge_in_after=2))
    barge = next(i for i, m in enumerate(messages) if m["event"] == "barge-in")
    clear = next(i for i, m in enumerate(messages) if m["event"] == "clear")
    after_clear = [m for m in messages[clear:] if m["event"] == "media"]
    assert clear > barge and messages[clear]["at"] - messages[barge]["at"] < 1.0
    assert after_clear == []  # the chunk the server had already sent is dropped, not played after the clear
    assert messages[-1]["mark"]["name"] == "reply-1-cancelled"
    heard = sum(len(base64.b64decode(m["media"]["payload"])) for m in messages if m["event"] == "media")
    assert heard < 6 * 2 * 1.0 * 8000  # far less than the whole reply (6 x 2 segments of ~0.96 s)
    deadline = time.monotonic() + 5
    while replica.stats().num_streams and time.monotonic() < deadline:
        time.sleep(0.05)
    assert replica.stats().num_streams == 0
