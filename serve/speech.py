"""The one request path every edge takes (OpenAI's /v1/audio/speech, the v2 protocol over HTTP
and gRPC): a validated SpeechRequest becomes a SpeechJob (model checked, voice resolved, text
split at sentences, the audio cap carried) and goes to the backend; the first audio chunk is
awaited here, so overload and unusable input surface before a response has started. What
comes back is one `SpeechStream`, which times the request and records its metrics, success
and failure alike; the edges only encode. Every failure is a ReplicaError with its
ErrorInfo, which each edge maps to its protocol with its own table.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from contract.backend import SpeechBackend
from contract.errors import ErrorInfo, ErrorKind, ReplicaError
from contract.job import SpeechJob
from contract.playback import PlaybackClock, PlaybackSummary
from contract.text_feed import PieceDone, TextFeed
from models.params import SAMPLE_RATE_HZ
from observability import metrics as m
from stores.voices import OPENAI_VOICES

from .conversations import ConversationService
from .schemas import SpeechRequest
from .settings import ServerSettings
from .text import split_text
from .voices import VoiceService

log = logging.getLogger(__name__)
OUTCOMES: dict[ErrorKind, str] = {"invalid_request": "client_error", "not_found": "client_error",
                                  "conflict": "client_error",
                                  "overloaded": "rejected", "unavailable": "rejected", "internal": "error"}


@dataclass(frozen=True)
class StreamTiming:
    """Monotonic ns: the job started (after the edge validated the request), its first audio
    was ready (0: none), its stream ended (0: not yet)."""

    start_ns: int
    first_ns: int
    end_ns: int


class RequestTally:
    """One speech request's metrics: time to first audio, duration, real-time factor, audio
    seconds, and its outcome, labelled with the protocol that carried it."""

    def __init__(self, metrics: m.MetricsSink, protocol: str, fmt: str, voice: str) -> None:
        self.metrics, self.t0 = metrics, time.monotonic()
        self.labels = {"format": fmt, "voice": voice, "protocol": protocol}

    def first_audio(self) -> None:
        self.metrics.observe(m.TTFA, time.monotonic() - self.t0)

    def playback(self, summary: PlaybackSummary) -> None:
        """A streamed request's listener (contract/playback.py): its gaps and its lowest slack."""
        labels = {"protocol": self.labels["protocol"]}
        if summary.underruns:  # Ray's counters take positive increments only
            self.metrics.inc(m.UNDERRUNS, summary.underruns, labels=labels)
            self.metrics.inc(m.UNDERRUN_SECONDS, summary.gap_s, labels=labels)
        if summary.min_slack_s is not None:  # a gap counts as 0: OpenTelemetry (Ray) drops negative observations
            self.metrics.observe(m.MIN_SLACK, max(0.0, summary.min_slack_s), labels=labels)

    def stage(self, stage: str, seconds: float) -> None:
        self.metrics.observe(m.STAGE_SECONDS, seconds, labels={"stage": stage})

    def done(self, outcome: str, samples: int = 0) -> None:
        elapsed = time.monotonic() - self.t0
        self.metrics.inc(m.REQUESTS, labels={"outcome": outcome, **self.labels})
        if samples:
            audio_s = samples / SAMPLE_RATE_HZ
            self.metrics.observe(m.DURATION, elapsed)
            self.metrics.observe(m.RTF, elapsed / audio_s)
            self.metrics.inc(m.AUDIO_SECONDS, audio_s)


class SpeechStream:
    """A started speech job: iterate `audio()` once for its float32 24 kHz PCM chunks (a
    ReplicaError if it fails mid-way); leaving early, or `aclose()`, aborts the generation.
    An edge that streams to a listener calls `sent(n)` each time it has handed a chunk's
    audio to the transport (the listener's playback clock). Its metrics are recorded once,
    when it ends."""

    def __init__(self, first: np.ndarray | None, rest: AsyncIterator[np.ndarray], tally: RequestTally,
                 start_ns: int, request_id: str) -> None:
        self._first, self._rest, self._tally, self._request_id = first, rest, tally, request_id
        self._start_ns, self._first_ns, self._end_ns = start_ns, time.monotonic_ns() if first is not None else 0, 0
        self.num_samples = 0
        self.outcome: str | None = None  # ok, cancelled or error, once ended
        self._clock: PlaybackClock | None = None  # made by the first sent()
        self._yielded: float | None = None  # when audio() last handed out a chunk not yet sent

    @property
    def timing(self) -> StreamTiming:
        return StreamTiming(self._start_ns, self._first_ns, self._end_ns)

    async def audio(self) -> AsyncIterator[np.ndarray | PieceDone]:
        """The chunks (and, for a job with marks, a PieceDone after each text's audio)."""
        outcome = "error"
        try:
            chunk = self._first
            while chunk is not None:
                if not isinstance(chunk, PieceDone):
                    self.num_samples += len(chunk)
                    self._yielded = time.monotonic()
                yield chunk
                chunk = await anext(self._rest, None)
            outcome = "ok"
        except (GeneratorExit, asyncio.CancelledError):
            outcome = "cancelled"
            raise
        except ReplicaError as e:
            log.error("request %s: stream cut after %d samples: %s (%s)", self._request_id, self.num_samples,
                      e.info.message, e.info.kind)
            raise
        finally:
            await self._end(outcome)

    def sent(self, num_samples: int) -> None:
        """`num_samples` of audio have just been handed to the transport."""
        now = time.monotonic()
        if self._yielded is not None:  # the stage from the chunk leaving audio() to the transport: encoding
            self._tally.stage("encode", now - self._yielded)
            self._yielded = None
        if self._clock is None:
            self._clock = PlaybackClock()
        self._clock.delivered(now, num_samples)

    def wait_input(self) -> None:
        """The stream has spoken all its text and waits for the client's (PlaybackClock)."""
        if self._clock is not None:
            self._clock.wait_input()

    def input_arrived(self) -> None:
        if self._clock is not None:
            self._clock.input_arrived(time.monotonic())

    async def aclose(self) -> None:
        """End the stream now if it has not ended (never iterated, or left early)."""
        await self._end("cancelled")

    async def _end(self, outcome: str) -> None:
        if self.outcome is not None:
            return
        self.outcome, self._end_ns = outcome, time.monotonic_ns()
        self._tally.done(outcome, self.num_samples)
        if self._clock is not None:
            self._tally.playback(self._clock.summary())
        await self._rest.aclose()


class SpeechService:
    def __init__(self, backend: SpeechBackend, voices: VoiceService, conversations: ConversationService,
                 settings: ServerSettings, metrics: m.MetricsSink) -> None:
        self.backend, self.voices, self.conversations = backend, voices, conversations
        self.settings, self.metrics = settings, metrics
        self.models = (settings.model_id, *settings.model_aliases)

    async def start(self, request: SpeechRequest, protocol: str, request_id: str, fmt: str | None = None,
                    timeout_s: float | None = None, feed: TextFeed | None = None) -> SpeechStream:
        """Start speaking `request` (metrics labelled `protocol` and `fmt`, default its
        response_format; `timeout_s`: the longest it may wait to start, Triton's `timeout`;
        `feed`: more text after the request's, as it comes, with a PieceDone after each
        text's audio). Raises ReplicaError before any audio for everything that stops it."""
        start_ns = time.monotonic_ns()
        voice_label = request.voice_key if request.voice_key in OPENAI_VOICES else "custom"
        tally = RequestTally(self.metrics, protocol, fmt or request.response_format, voice_label)
        self.metrics.inc(m.INPUT_CHARS, len(request.input))
        try:
            job = await self._job(request, request_id, timeout_s)
            if feed is not None:
                job = job.model_copy(update={"feed": feed, "marks": True})
            chunks = self.backend.synthesize(job)
            try:
                first = await anext(chunks, None)
            except BaseException:
                await chunks.aclose()
                raise
        except ReplicaError as e:
            tally.done(OUTCOMES[e.info.kind])
            raise
        except BaseException:
            tally.done("error")
            raise
        if first is not None:
            tally.first_audio()
        return SpeechStream(first, chunks, tally, start_ns, request_id)

    async def _job(self, request: SpeechRequest, request_id: str, timeout_s: float | None) -> SpeechJob:
        if request.model not in self.models:
            raise ReplicaError(ErrorInfo(kind="not_found", message=f"The model '{request.model}' does not exist.",
                                         param="model", code="model_not_found"))
        if (refused := await self.backend.check_admission(request.priority)) is not None:
            raise ReplicaError(refused)  # at capacity: answered before any work on the request
        voice_key = request.voice_key
        if request.conversation is not None:  # a conversation with a voice speaks in it
            voice_key = (await self.conversations.get(request.conversation)).voice or voice_key
        voice = await self.voices.resolve(voice_key)
        texts = await asyncio.to_thread(split_text, request.input, self.settings.segment_max_chars)
        return SpeechJob(request_id=request_id, texts=tuple(texts), voice=voice,
                         params=request.generation_params(voice.speaker), max_audio_s=request.max_audio_seconds,
                         priority=request.priority, timeout_s=timeout_s, conversation=request.conversation)

