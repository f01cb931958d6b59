"""Texts in, PCM out: one speech stream = one job (contract/job.py), one context, one decoder row.

Each text is generated with the context (a voice's or a conversation's computed prefix) plus
the previous text's audio codes (so the voice holds), and every frame goes through the
stream's one streaming Mimi row (so texts join without gaps, clicks or repeated audio). The
stream's audio cap is the engine's too: each text's request may take only the frames left,
ends there with reason `length`, and the last chunk is cut to the exact sample.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import numpy as np

from contract.job import SpeechJob
from contract.playback import PlaybackClock
from contract.text_feed import PieceDone, TextFeed
from models.core.prompt import Prefix, PromptContext
from models.frontend.decoder import MimiDecodeWorker
from models.frontend.engine_loop import EngineLoop
from models.params import (
    CODEBOOK_SIZE,
    FRAME_RATE_HZ,
    SAMPLE_RATE_HZ,
    SAMPLES_PER_FRAME,
    Priority,
    Segment,
)

from .admission import Admission, Ticket
from .joins import JoinGate
from .realtime import FRAME_S


def chunk_frames(chunk_s: float) -> int:
    """Frames (80 ms each) per streamed PCM chunk for a target chunk duration."""
    return max(1, round(chunk_s * FRAME_RATE_HZ))


def next_chunk_frames(delivered: int, lead: float, cap: int) -> int:
    """Frames in a stream's next chunk, after `delivered` frames went out: 1 + floor(lead x
    delivered), at most `cap`. A listener plays from the first chunk with nothing buffered, so
    chunk k (s_k frames, F_k in all) must leave before the F_(k-1) frames before it are played:
    the first frame goes at once, then a frame every step period P, so (F_k - 1) P <= F_(k-1) x
    80 ms. With P <= 80 ms / (1 + lead) (what real-time admission keeps, lead = its margin)
    that holds iff s_k <= 1 + lead x F_(k-1): the chunks grow as the listener's buffer does
    (1, 1, 1, 1, 1, 2, 2, 2, 3 with lead 0.2), never faster. Doubling (1, 2, 4) would need
    P <= 40 ms for the second chunk. That is the largest a chunk may grow; a stream sends
    earlier when its listener's slack says so (SpeechPipeline._due)."""
    return max(1, min(cap, 1 + int(lead * delivered + 1e-9)))


FLUSH_MARGIN_S = 0.05  # a chunk's decode and transport after its last frame, and their jitter


class SpeechPipeline:
    def __init__(self, loop: EngineLoop, admission: Admission, decoder: MimiDecodeWorker, chunk_frames: int = 3,
                 on_stage: Callable[[str, float], None] | None = None, lead: float = 0.2,
                 max_join_defer_s: float = 0.3) -> None:
        """`on_stage(stage, seconds)`: where a stream's time goes (queue: waiting to start,
        prefill: a text's first frame after it was sent to the engine, decode: one chunk).
        `lead`: how fast chunks grow to `chunk_frames` (next_chunk_frames; the real-time margin).
        `max_join_defer_s`: how long a text may wait for the playing streams' slack (joins.py)."""
        self.loop, self.admission, self.decoder = loop, admission, decoder
        self.chunk_frames, self.lead = chunk_frames, lead
        self._on_stage = on_stage or (lambda stage, seconds: None)
        self._clocks: dict[str, PlaybackClock] = {}  # interactive streams' listeners, as PCM leaves here
        self.joins = JoinGate(self._clocks, admission.period_s, max_join_defer_s)

    def is_behind(self) -> bool:
        """Whether an interactive stream's listener is hearing a gap now (its audio left this
        replica later than real time): the admission's check of the whole path."""
        now = time.monotonic()
        return any((slack := clock.slack(now)) is not None and slack < 0 for clock in self._clocks.values())

    @contextlib.asynccontextmanager
    async def admit(self, priority: Priority = "interactive", timeout_s: float | None = None) -> AsyncIterator[Ticket]:
        """Hold a row for one stream: admitted now (or after a short wait) or refused
        (Overloaded, QueueTimeout: admission.py). Whatever the stream needs before it speaks
        (its voice's or conversation's prefix) is computed inside, once admitted."""
        t0 = time.perf_counter()
        async with self.admission.row(priority, timeout_s) as ticket:
            self._on_stage("queue", time.perf_counter() - t0)
            yield ticket

    async def stream(self, job: SpeechJob, context: Prefix | None = None,
                     on_segment_done: Callable[[int, Segment], None] | None = None) -> AsyncIterator[np.ndarray | PieceDone]:
        """`admit` (the job's priority and timeout), then `speak` (arguments as there):
        Overloaded or QueueTimeout before the first chunk when the stream is not admitted."""
        async with self.admit(job.priority, job.timeout_s) as ticket:
            async with contextlib.aclosing(self.speak(ticket, job, context, on_segment_done)) as chunks:
                async for chunk in chunks:
                    yield chunk

    async def speak(self, ticket: Ticket, job: SpeechJob, context: Prefix | None = None,
                    on_segment_done: Callable[[int, Segment], None] | None = None) -> AsyncIterator[np.ndarray | PieceDone]:
        """Yield float32 PCM chunks (24 kHz mono) of `job` on the row `ticket` holds (admit): the
        first one frame (80 ms, so first audio costs prefill + one frame + one small decode), the
        next ones growing with the audio already out (next_chunk_frames) up to `chunk_frames`
        frames (steady state: few, batched decodes).

        Text i runs with `job.params.for_segment(i)` (seed + i) and the computed `context` (a
        voice's or a conversation's prefix) plus text i-1's audio; the whole stream is at most
        `job.max_audio_s` long. Raises RequestError before the first chunk for unusable input.
        `on_segment_done(i, segment)` gets each text as spoken once its audio is out (its codes
        are the context of the next text). The ticket's `frames_left` follows the stream (an
        upper bound: the texts' frame caps, the audio cap), for the admission's estimate of when
        rows free up.

        `job.feed`: the texts after `job.texts`, taken one at a time as each previous text's
        codes exist (so a text that came while the one before was speaking follows it with no
        gap); while the stream waits for one, its listener's silence is the client's, not a gap
        (PlaybackClock.wait_input). `job.marks`: a PieceDone after each text's last chunk."""
        request_id = job.request_id
        caps = _Caps.of(job)
        clock = PlaybackClock() if ticket.priority == "interactive" else None
        if clock is not None:
            self._clocks[request_id] = clock
        try:  # closing the stream closes the generation at once (its engine request is aborted)
            pieces = _pieces(job.texts, job.feed, clock)
            left = _FramesLeft(ticket, [self.loop.engine.default_max_frames(t) for t in job.texts], caps.frames,
                               job.feed is not None)
            async with contextlib.aclosing(self._generate(job, pieces, ticket, context, caps, on_segment_done, left,
                                                          clock)) as items:
                async for item in items:
                    if isinstance(item, PieceDone):
                        if job.marks:
                            yield item
                        continue
                    if clock is not None:
                        clock.delivered(time.monotonic(), len(item))
                        self.joins.starting.discard(request_id)
                    yield item
        finally:
            self._clocks.pop(request_id, None)
            self.joins.starting.discard(request_id)

    async def _generate(self, job: SpeechJob, texts: AsyncIterator[str], ticket: Ticket, context: Prefix | None,
                        caps: _Caps, on_segment_done: Callable[[int, Segment], None] | None,
                        left: _FramesLeft, clock: PlaybackClock | None) -> AsyncIterator[np.ndarray | PieceDone]:
        request_id, params = job.request_id, job.params
        frame_budget, max_samples = caps.frames, caps.samples
        is_first = True  # the row's first decode resets it
        chunk = 1  # frames in the next chunk (next_chunk_frames)
        previous: tuple[Segment, ...] = ()
        num_frames = num_samples = 0
        i = -1
        async for text in texts:
            i += 1
            start_samples = num_samples
            frame_cap = None if frame_budget is None else frame_budget - num_frames
            if frame_cap is not None and frame_cap <= 0:
                break
            frames: list[list[int]] = []
            pending: list[list[int]] = []
            joining = await self.joins.enter(request_id)  # playing streams must have slack for it (joins.py)
            sent = time.perf_counter()
            try:
                async for out in self.loop.generate(f"{request_id}/{i}", text, params.for_segment(i),
                                                    PromptContext.of(context, *previous), frame_cap, ticket.priority):
                    joining.leave()
                    if not frames and out.frames:
                        self._on_stage("prefill", time.perf_counter() - sent)
                    frames += out.frames
                    left.update(i, len(frames), num_frames + len(frames))
                    pending += out.frames
                    if pending and self._due(pending, chunk, is_first, out.is_finished, clock):
                        if is_first and clock is not None:
                            self.joins.starting.add(request_id)  # till its first audio is out (joins.py)
                        t0 = time.perf_counter()
                        pcm = await self.decoder.decode(ticket.row, is_first, pending)
                        self._on_stage("decode", time.perf_counter() - t0)
                        delivered = num_frames + len(frames)  # every frame so far is out with this chunk
                        pending, is_first = [], False
                        chunk = next_chunk_frames(delivered, self.lead, self.chunk_frames)
                        if max_samples is not None:
                            pcm = pcm[: max_samples - num_samples]
                        num_samples += len(pcm)
                        yield pcm
            finally:
                joining.leave()
            num_frames += len(frames)
            codes = tuple(tuple(min(c, CODEBOOK_SIZE - 1) for c in f) for f in frames)
            spoken = Segment(speaker=params.speaker, text=text, codes=codes)
            previous = (spoken,) if codes else ()
            if on_segment_done is not None:
                on_segment_done(i, spoken)
            yield PieceDone(i, text, start_samples / SAMPLE_RATE_HZ, num_samples / SAMPLE_RATE_HZ)
            if frame_budget is not None and num_frames >= frame_budget:
                return  # at the cap: done, without waiting for a text that could not be spoken

    def _due(self, pending: list, chunk: int, is_first: bool, is_finished: bool, clock: PlaybackClock | None) -> bool:
        """Whether the frames pending make a chunk now. A text's last frames go at once. A
        stream's first chunk goes at once, unless others are joining: then it waits until it
        covers their step (joins.py). Later chunks go at `chunk` frames (next_chunk_frames),
        or earlier when the listener's slack would not last another step and the chunk's
        decode and transport (steps slower than the schedule assumes, a joining step)."""
        if is_finished:
            return True
        if is_first:
            return not (self.joins.num_joining and len(pending) < self.chunk_frames
                        and len(pending) * FRAME_S < self.joins.next_step_s() + self.joins.margin_s)
        if len(pending) >= chunk:
            return True
        slack = clock.slack(time.monotonic()) if clock is not None else None
        return slack is not None and slack < self.joins.next_step_s() + FLUSH_MARGIN_S

    def shutdown(self) -> None:
        self.loop.shutdown()
        self.decoder.close()


@dataclass(frozen=True)
class _Caps:
    """A stream's audio cap, in samples and in frames (None: uncapped)."""

    samples: int | None
    frames: int | None

    @classmethod
    def of(cls, job: SpeechJob) -> _Caps:
        samples = round(job.max_audio_s * SAMPLE_RATE_HZ) if job.max_audio_s else None
        return cls(samples, -(-samples // SAMPLES_PER_FRAME) if samples else None)


class _FramesLeft:
    """Keeps a ticket's `frames_left`: the frames the stream may still generate, at most what
    its known texts' caps allow (the current one's less what it made) and what its audio cap
    leaves; unknown (inf) while a feed may bring more text."""

    def __init__(self, ticket: Ticket, caps: list[int], frame_budget: int | None, has_feed: bool) -> None:
        self.ticket, self.caps, self.frame_budget, self.has_feed = ticket, caps, frame_budget, has_feed
        self.update(0, 0, 0)

    def update(self, text: int, text_frames: int, stream_frames: int) -> None:
        left = math.inf if self.has_feed else max(0, sum(self.caps[text:]) - text_frames)
        if self.frame_budget is not None:
            left = min(left, max(0, self.frame_budget - stream_frames))
        self.ticket.frames_left = left


async def _pieces(texts: tuple[str, ...] | list[str], feed: TextFeed | None,
                  clock: PlaybackClock | None) -> AsyncIterator[str]:
    """The job's texts, then the feed's as they come (the listener's clock told of each wait)."""
    for text in texts:
        yield text
    while feed is not None:
        if clock is not None:
            clock.wait_input()
        text = await feed.next_text()
        if clock is not None:
            clock.input_arrived(time.monotonic())
        if text is None:
            return
        yield text
