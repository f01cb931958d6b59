"""`csm-serve wyoming` as Home Assistant uses it: the real CLI in its own process, in front of a
real csm-serve (uvicorn, in-process engine, csm-tiny) on loopback, driven by the `wyoming`
package's own TCP client."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time

import httpx
import pytest
from wyoming.audio import AudioChunk, AudioStart
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeVoice

from models import EngineConfig
from stores.voices import OPENAI_VOICES
from tests.conftest import free_port, wait_engine_idle, wav_bytes
from tests.local_server import local_server
from tests.wyoming_server import wyoming_client

# The tiny model never says EOS: each text segment stops at 25 frames (2 s), so a text of
# several segments streams for several seconds.
ENGINE = EngineConfig(model="csm-tiny", device="cpu", max_num_seqs=4, max_frames_cap=25)
LONG_TEXT = ("The first part of this answer is here. Then a second sentence follows it closely. "
             "And a third one ends the whole reply.")
READ_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with local_server(str(tmp_path_factory.mktemp("voices")), engine=ENGINE, segment_max_chars=40) as running:
        yield running


@pytest.fixture(scope="module")
def wyoming_port(api):
    """`csm-serve wyoming` (the console script's code, in a child process) on a free port."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "deployments.cli", "wyoming", "--uri", f"tcp://127.0.0.1:{port}",
                             "--api-url", api[0]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            break
        assert proc.poll() is None and time.monotonic() < deadline, f"wyoming did not start: {proc.stdout.read()}"
        time.sleep(0.1)
    yield port
    proc.terminate()
    proc.wait(10)


async def _events_until(client: AsyncTcpClient, last: str) -> list[tuple[float, object]]:
    """(arrival time, event) up to and including the first event of type `last` or an error."""
    events = []
    while True:
        event = await asyncio.wait_for(client.read_event(), READ_TIMEOUT_S)
        assert event is not None, "the server closed the connection"
        events.append((time.monotonic(), event))
        if event.type in (last, "error"):
            return events


def _audio(events) -> bytes:
    return b"".join(AudioChunk.from_event(e).audio for _, e in events if AudioChunk.is_type(e.type))


def _kinds(events) -> list[str]:
    return [e.type for _, e in events if e.type != "audio-chunk"]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 180))


def test_describe_lists_the_voices_and_streaming(wyoming_port):
    async def go():
        async with AsyncTcpClient("127.0.0.1", wyoming_port) as client:
            await client.write_event(Describe().event())
            return Info.from_event(await asyncio.wait_for(client.read_event(), READ_TIMEOUT_S))

    [program] = run(go()).tts
    assert program.installed and program.supports_synthesize_streaming
    assert [v.name for v in program.voices] == list(OPENAI_VOICES)
    assert all(v.languages == ["en"] for v in program.voices)


def test_synthesize_streams_audio_before_the_text_is_all_spoken(wyoming_port):
    async def go():
        async with AsyncTcpClient("127.0.0.1", wyoming_port) as client:
            sent = time.monotonic()
            await client.write_event(Synthesize(text=LONG_TEXT, voice=SynthesizeVoice(name="echo")).event())
            return sent, await _events_until(client, "audio-stop")

    sent, events = run(go())
    assert _kinds(events) == ["audio-start", "audio-stop"]
    start = AudioStart.from_event(events[0][1])
    assert (start.rate, start.width, start.channels) == (24_000, 2, 1)
    chunks = [(t, e) for t, e in events if e.type == "audio-chunk"]
    audio_s = len(_audio(events)) / 2 / 24_000
    assert audio_s > 2.0 + 1e-6, "more than one segment of the text was spoken"
    assert len(chunks) >= 5
    # the first audio came while the rest of the text was still being generated
    assert chunks[0][0] - sent < 0.5 * (events[-1][0] - sent)


def test_streamed_text_is_spoken_from_the_first_complete_sentence(wyoming_port):
    async def go():
        async with AsyncTcpClient("127.0.0.1", wyoming_port) as client:
            await client.write_event(SynthesizeStart(voice=SynthesizeVoice(name="nova")).event())
            await client.write_event(SynthesizeChunk(text="Here is the first sentence, complete. The sec").event())
            # audio for the first sentence starts while the LLM is still writing the second
            first = await _events_until(client, "audio-start")
            for text in ("ond one ", "comes in", " pieces."):
                await client.write_event(SynthesizeChunk(text=text).event())
            await client.write_event(Synthesize(text="the whole text again, for older servers").event())
            await client.write_event(SynthesizeStop().event())
            return first + await _events_until(client, "synthesize-stopped")

    events = run(go())
    assert _kinds(events) == ["audio-start", "audio-stop"] * 2 + ["synthesize-stopped"]
    assert len(_audio(events)) == 2 * 25 * 1920 * 2  # two sentences, 2 s each; the repeated text was ignored


def test_custom_voice_and_bad_voice(api, wyoming_port):
    url, _ = api
    created = httpx.post(url + "/v1/audio/voices", data={"name": "kitchen", "transcript": "A quiet tone."},
                         files={"audio_sample": ("tone.wav", wav_bytes(2.0), "audio/wav")}, timeout=60)
    assert created.status_code == 200, created.text
    voice_id = created.json()["id"]

    async def go():
        async with AsyncTcpClient("127.0.0.1", wyoming_port) as client:
            await client.write_event(Describe().event())
            info = Info.from_event(await asyncio.wait_for(client.read_event(), READ_TIMEOUT_S))
            results = {"info": info}
            for name in ("nobody-here", voice_id, "kitchen"):
                await client.write_event(Synthesize(text="Short.", voice=SynthesizeVoice(name=name)).event())
                results[name] = await _events_until(client, "audio-stop")
            # a text stream with a bad voice: one error, then the stream still ends
            await client.write_event(SynthesizeStart(voice=SynthesizeVoice(name="nobody-here")).event())
            await client.write_event(SynthesizeChunk(text="One sentence here. Another one there. And more.").event())
            await client.write_event(SynthesizeStop().event())
            results["stream"] = await _events_until(client, "error") + await _events_until(client, "synthesize-stopped")
            return results

    try:
        results = run(go())
    finally:
        httpx.delete(f"{url}/v1/audio/voices/{voice_id}", timeout=30)
    custom = [v for v in results["info"].tts[0].voices if v.name == voice_id]
    assert len(custom) == 1 and custom[0].description == "kitchen"
    [(_, bad)] = results["nobody-here"]
    error = Error.from_event(bad)
    assert error.code == "voice_not_found" and "nobody-here" in error.text
    for name in (voice_id, "kitchen"):  # by id and by name, on the connection that saw the error
        assert _kinds(results[name]) == ["audio-start", "audio-stop"] and len(_audio(results[name])) == 25 * 1920 * 2
    assert _kinds(results["stream"]) == ["error", "synthesize-stopped"]


def test_a_client_that_vanishes_frees_its_slot(api, wyoming_port):
    url, backend = api

    async def go():
        client = AsyncTcpClient("127.0.0.1", wyoming_port)
        await client.connect()
        await client.write_event(Synthesize(text=LONG_TEXT * 6).event())  # about 36 s of audio
        await _events_until(client, "audio-chunk")
        assert backend.stats().engine.num_kv_slots_used == 1
        await client.disconnect()  # gone in the middle of the audio

    run(go())
    wait_engine_idle(backend)
    assert httpx.get(url + "/v2/health/ready", timeout=10).status_code == 200


def test_an_unreachable_api_is_an_error_event():
    async def go():
        async with wyoming_client(f"http://127.0.0.1:{free_port()}", timeout_s=5) as client:
            results = []
            for event in (Describe(), Synthesize(text="Anyone there?")):
                await client.write_event(event.event())
                results.append(await asyncio.wait_for(client.read_event(), 30))
            return results

    for event in run(go()):
        error = Error.from_event(event)
        assert error.code == "unavailable" and "ConnectError" in error.text
