"""clients/pipecat: csm-serve as a Pipecat TTS service, in Pipecat's own pipeline (PipelineWorker,
WorkerRunner) against a real csm-serve (uvicorn, in-process engine, csm-tiny; and behind Ray
Serve's proxy, slow): LLM tokens in, PCM out at the pipeline's rate framed by TTSStarted/Stopped,
word times from the server's segments, the same PCM as a POST for the same text and seed, an
interruption that stops the audio at once and frees the server's row, server errors as ErrorFrames."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable

import httpx
import numpy as np
import pytest
from pipecat.frames.frames import (
    EndFrame,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    TTSUpdateSettingsFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from clients.pipecat import CsmTTSService
from replica.config import ReplicaConfig
from tests.served import served_by

CAP = 25  # frames of 80 ms per text piece: the tiny model never ends a piece by itself
ENGINE = {"model": "csm-tiny", "device": "cpu", "max_num_seqs": 4, "max_frames_cap": CAP}
KEY = "sk-pipecat"
SETTINGS = {"api_keys": [KEY], "ws_flush_after_s": 2.0}  # no pause-flush between test tokens on a busy CPU
TEXT = "Here is the first sentence of the reply. And this is the second one"


@pytest.fixture(scope="module", params=["local", pytest.param("ray", marks=pytest.mark.slow)])
def served(request, tmp_path_factory):
    """(base url, streams held now: a callable), in-process and behind Ray Serve, with the
    shipped replica settings (real-time admission on, as serve_config.yaml has it)."""
    with served_by(request, str(tmp_path_factory.mktemp("voices")), ENGINE, SETTINGS, ReplicaConfig()) as served:
        yield served


@pytest.fixture
def local(served, request):
    if request.node.callspec.params.get("served") == "ray":
        pytest.skip("one end-to-end test through Ray is enough: the socket is the same")
    return served


class Recorder(FrameProcessor):
    """Notes every frame going one way, with when it came (direct mode: as it is pushed)."""

    def __init__(self, direction: FrameDirection) -> None:
        super().__init__(enable_direct_mode=True)
        self.direction, self.frames = direction, []  # (monotonic time, frame)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == self.direction:
            self.frames.append((time.monotonic(), frame))
        await self.push_frame(frame, direction)

    def of(self, kind: type) -> list:
        return [f for _, f in self.frames if isinstance(f, kind)]

    async def until(self, done: Callable[[Frame], bool], timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(done(f) for _, f in self.frames):
            assert time.monotonic() < deadline, [type(f).__name__ for _, f in self.frames]
            await asyncio.sleep(0.01)


Script = Callable[[PipelineWorker, Recorder, Recorder], Awaitable[None]]


def _pipeline(tts: CsmTTSService, rate: int, script: Script) -> tuple[Recorder, Recorder]:
    """Run [upstream recorder, tts, downstream recorder] at `rate` through `script`, then end."""
    up, down = Recorder(FrameDirection.UPSTREAM), Recorder(FrameDirection.DOWNSTREAM)
    worker = PipelineWorker(Pipeline([up, tts, down]), params=PipelineParams(audio_out_sample_rate=rate),
                            cancel_on_idle_timeout=False)
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(_worker, _frame):
        started.set()

    async def main() -> None:
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        running = asyncio.create_task(runner.run())
        try:
            await asyncio.wait_for(started.wait(), 30)
            await asyncio.wait_for(script(worker, up, down), 60)
            await worker.queue_frame(EndFrame())
        except BaseException:
            await worker.cancel(reason="the test failed")  # a failed check must not leave the pipeline running
            raise
        finally:
            await asyncio.wait({running}, timeout=30)

    asyncio.run(main())
    return up, down


def _tokens(text: str) -> list[Frame]:
    """An LLM's reply as it streams: word tokens with their leading spaces."""
    return [LLMFullResponseStartFrame(), *(LLMTextFrame(t) for t in re.findall(r"\s*\S+", text)),
            LLMFullResponseEndFrame()]


async def _say(worker: PipelineWorker, down: Recorder, frames: list[Frame]) -> None:
    stops = len(down.of(TTSStoppedFrame))
    await worker.queue_frames(frames)
    await down.until(lambda _: len(down.of(TTSStoppedFrame)) > stops)


def _service(url: str, **settings) -> CsmTTSService:
    return CsmTTSService(base_url=url, api_key=settings.pop("api_key", KEY),
                         settings=CsmTTSService.Settings(**{"voice": "alloy", "seed": 3, **settings}))


def _pcm(frames: list[TTSAudioRawFrame]) -> np.ndarray:
    return np.frombuffer(b"".join(f.audio for f in frames), np.int16).astype(int)


@pytest.mark.parametrize("rate", [16_000, 24_000])
def test_tokens_in_audio_out_at_the_pipeline_rate_with_word_times(served, rate):
    url, streams = served
    _, down = _pipeline(_service(url), rate, lambda w, _, d: _say(w, d, _tokens(TEXT)))
    kinds = [type(f) for _, f in down.frames]
    audio = down.of(TTSAudioRawFrame)
    assert kinds.count(TTSStartedFrame) == kinds.count(TTSStoppedFrame) == 1
    first, last = kinds.index(TTSAudioRawFrame), len(kinds) - 1 - kinds[::-1].index(TTSAudioRawFrame)
    assert kinds.index(TTSStartedFrame) < first and last < kinds.index(TTSStoppedFrame)
    times = [t for t, _ in down.frames]  # stopped as the server ends the response, not by Pipecat's idle timeout
    assert times[kinds.index(TTSStoppedFrame)] - times[last] < 1.0
    assert {(f.sample_rate, f.num_channels) for f in audio} == {(rate, 1)}
    assert len({f.context_id for f in audio}) == 1
    piece_samples = CAP * rate * 2 // 25  # 80 ms frames
    assert len(_pcm(audio)) == 2 * piece_samples  # two sentences, two pieces: all the audio the server made
    words = down.of(TTSTextFrame)
    assert " ".join(w.text for w in words) == TEXT
    starts = [w.pts for w in words]
    assert all(starts) and starts == sorted(starts)
    second = TEXT.split().index("And")  # the first word of the second sentence
    # in seconds of audio: the second piece starts CAP * 80 ms after the first (pts: nanoseconds)
    assert (starts[second] - starts[0]) / 1e9 == pytest.approx(CAP * 0.08, abs=1e-3)
    assert 0 < (starts[second - 1] - starts[0]) / 1e9 < CAP * 0.08
    deadline = time.monotonic() + 5
    while streams() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert streams() == 0


def test_same_text_and_seed_give_the_pcm_of_a_post(local):
    """The seed set by a settings update (Pipecat's TTSUpdateSettingsFrame), not the constructor's."""
    url, _ = local
    text, rate = "One sentence, spoken as the LLM streams it to the socket.", 16_000
    update = TTSUpdateSettingsFrame(delta=CsmTTSService.Settings(seed=11))
    _, down = _pipeline(_service(url, seed=1), rate, lambda w, _, d: _say(w, d, [update, *_tokens(text)]))
    body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm", "seed": 11,
            "sample_rate": rate}
    post = httpx.post(url + "/v1/audio/speech", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert post.status_code == 200
    a, b = np.frombuffer(post.content, np.int16).astype(int), _pcm(down.of(TTSAudioRawFrame))
    assert a.shape == b.shape == (CAP * rate * 2 // 25,) and np.abs(a - b).max() <= 2


def test_an_interruption_stops_the_audio_at_once_and_frees_the_row(local):
    url, streams = local
    reply = " ".join(f"Sentence number {i} of a long reply that is interrupted." for i in range(8))
    marks: dict[str, float] = {}

    async def script(worker: PipelineWorker, _up: Recorder, down: Recorder) -> None:
        await worker.queue_frames(_tokens(reply)[:-1])  # the LLM is still writing
        await down.until(lambda _: len(down.of(TTSAudioRawFrame)) >= 3)  # mid first sentence
        marks["interrupted"] = time.monotonic()
        await worker.queue_frame(InterruptionFrame())
        while streams():
            assert time.monotonic() - marks["interrupted"] < 5, "the server still holds the row"
            await asyncio.sleep(0.01)
        marks["freed"] = time.monotonic()
        await _say(worker, down, [TTSSpeakFrame("Still serving.")])

    _, down = _pipeline(_service(url), 24_000, script)
    interrupted_ctx = down.of(TTSAudioRawFrame)[0].context_id
    at = next(i for i, (_, f) in enumerate(down.frames) if isinstance(f, InterruptionFrame))
    late = [(t, f) for t, f in down.frames[at:] if isinstance(f, TTSAudioRawFrame) and f.context_id == interrupted_ctx]
    assert len(late) <= 1
    last_audio = max(t for t, f in down.frames if isinstance(f, TTSAudioRawFrame) and f.context_id == interrupted_ctx)
    chunks = [f for f in down.of(TTSAudioRawFrame) if f.context_id == interrupted_ctx]
    print(f"\ninterruption -> last audio frame of the interrupted response: "
          f"{(last_audio - marks['interrupted']) * 1000:+.1f} ms ({len(late)} frame(s) after the InterruptionFrame, "
          f"{len(chunks)} before it, {len(chunks[0].audio) / 48:.0f} ms each); "
          f"-> server row freed: {(marks['freed'] - marks['interrupted']) * 1000:.0f} ms")
    # the next utterance is whole and only its own: nothing of the cancelled response leaked into it
    after = [f for _, f in down.frames[at:] if isinstance(f, TTSAudioRawFrame) and f.context_id != interrupted_ctx]
    assert len({f.context_id for f in after}) == 1 and len(_pcm(after)) == CAP * 1920


@pytest.mark.parametrize(("settings", "message"), [
    ({"voice": "nobody"}, "voice 'nobody' not found"),
    ({"api_key": "sk-wrong"}, "Incorrect or missing API key"),
])
def test_server_errors_are_error_frames(local, settings, message):
    url, _ = local

    async def script(worker: PipelineWorker, up: Recorder, _down: Recorder) -> None:
        await worker.queue_frame(TTSSpeakFrame("Hello there."))
        await up.until(lambda f: isinstance(f, ErrorFrame) and message in f.error)

    _, down = _pipeline(_service(url, **settings), 24_000, script)
    assert not down.of(TTSAudioRawFrame)


def test_a_cancelled_responses_tail_is_dropped_until_the_server_confirms_the_cancel():
    """Audio the server sent before it read response.cancel can arrive after the next turn began
    (the socket is ordered, so `input_text_buffer.cleared` marks its end): none of it goes into the
    new turn's audio context. At the seam: the service's receive handlers, without a socket."""
    from serve.speech_socket.events import SegmentDone, TextCleared

    tts = _service("http://127.0.0.1:1")
    appended: list[tuple[str, Frame]] = []

    async def append(context_id: str, frame: Frame) -> None:
        appended.append((context_id, frame))

    async def words(times, context_id) -> None:
        appended.append((context_id, TTSTextFrame(" ".join(w for w, _ in times), aggregated_by="word")))

    tts.append_to_audio_context, tts.add_word_timestamps = append, words

    async def script() -> None:
        tts._context_id, tts._draining = "next-turn", 1  # cancelled, then the next turn's text sent
        await tts._audio(b"\x01\x00" * 480)  # the cancelled response's last chunk
        await tts._event(SegmentDone(response_id="r", index=0, text="old words", start_s=0.0, end_s=0.5))
        assert appended == []
        await tts._event(TextCleared(num_chars=5))
        await tts._audio(b"\x02\x00" * 480)  # the next turn's first chunk
        assert [(c, f.audio[:2]) for c, f in appended] == [("next-turn", b"\x02\x00")]

    asyncio.run(script())
