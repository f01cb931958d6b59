"""One Wyoming connection: `describe` -> `info`; `synthesize` -> audio-start, audio-chunk...,
audio-stop, streamed as the API sends the audio; streaming synthesis (`synthesize-start`,
`synthesize-chunk`..., `synthesize-stop`) speaks each sentence as soon as it is complete,
then ends with `synthesize-stopped`.

The event loop of the `wyoming` package reads events; a worker task per connection speaks the
queued sentences in order, so reading goes on while audio streams and a client that goes away
(end of its stream) cancels the worker, which closes the HTTP request and so frees its slot on
the server. Failures become Wyoming `error` events; the connection keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from sentence_stream import SentenceBoundaryDetector
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Attribution, Describe, Info, TtsProgram, TtsVoice
from wyoming.server import AsyncEventHandler
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped

from models.params import SAMPLE_RATE_HZ
from serve.schemas import MAX_INPUT_CHARS
from serve.text import split_text

from .api import SpeechAPI, SpeechAPIError

log = logging.getLogger(__name__)
VERSION = "0.1.0"
LANGUAGES = ["en"]  # CSM-1B speaks English


@dataclass(frozen=True)
class Say:
    """Speak `text` (at most MAX_INPUT_CHARS) as part of `group`: one plain `synthesize` (its
    pieces share one audio-start/-stop: `is_first`/`is_last`) or one text stream (each
    sentence is framed by its own audio-start/-stop, as other Wyoming servers do)."""

    text: str
    voice: str
    group: int
    is_first: bool = True
    is_last: bool = True


@dataclass(frozen=True)
class EndOfStream:
    group: int


@dataclass
class _TextStream:
    group: int
    voice: str
    sentences: SentenceBoundaryDetector


class SpeechEventHandler(AsyncEventHandler):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, api: SpeechAPI) -> None:
        super().__init__(reader, writer)
        self.api = api
        self.jobs: asyncio.Queue[Say | EndOfStream] = asyncio.Queue()
        self.text_stream: _TextStream | None = None
        self.num_groups = 0
        self.worker = asyncio.create_task(self._work(), name="wyoming speech worker")

    async def handle_event(self, event: Event) -> bool:
        if Describe.is_type(event.type):
            await self._describe()
        elif Synthesize.is_type(event.type):
            if self.text_stream is None:  # inside a stream it only repeats the text, for older servers
                self._say(Synthesize.from_event(event))
        elif SynthesizeStart.is_type(event.type):
            voice = self._voice(SynthesizeStart.from_event(event).voice)
            self.text_stream = _TextStream(self._next_group(), voice, SentenceBoundaryDetector())
        elif SynthesizeChunk.is_type(event.type) and self.text_stream is not None:
            for sentence in self.text_stream.sentences.add_chunk(SynthesizeChunk.from_event(event).text):
                self._queue_stream_text(sentence)
        elif SynthesizeStop.is_type(event.type) and self.text_stream is not None:
            self._queue_stream_text(self.text_stream.sentences.finish())
            self.jobs.put_nowait(EndOfStream(self.text_stream.group))
            self.text_stream = None
        return True

    async def disconnect(self) -> None:
        self.worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.worker

    # --- reading side: turn events into jobs ---------------------------------------------------

    def _next_group(self) -> int:
        self.num_groups += 1
        return self.num_groups

    def _voice(self, voice) -> str:
        return voice.name if voice is not None and voice.name else self.api.settings.voice

    def _say(self, synthesize: Synthesize) -> None:
        pieces = _pieces(synthesize.text) or [synthesize.text]  # empty: the API's error goes back
        voice, group = self._voice(synthesize.voice), self._next_group()
        for i, piece in enumerate(pieces):
            self.jobs.put_nowait(Say(piece, voice, group, is_first=i == 0, is_last=i == len(pieces) - 1))

    def _queue_stream_text(self, sentence: str) -> None:
        assert self.text_stream is not None
        for piece in _pieces(sentence):
            self.jobs.put_nowait(Say(piece, self.text_stream.voice, self.text_stream.group))

    async def _describe(self) -> None:
        try:
            voices = await self.api.voices()
        except SpeechAPIError as e:
            await self.write_event(Error(text=e.message, code=e.code).event())
            return
        by = Attribution(name="Sesame CSM, served by csm-serve", url=self.api.settings.api_url)
        program = TtsProgram(
            name="csm-serve", attribution=by, installed=True, version=VERSION, supports_synthesize_streaming=True,
            description="Sesame CSM text to speech (csm-serve)",
            voices=[TtsVoice(name=v.id, description=v.name, attribution=by, installed=True, version=None,
                             languages=LANGUAGES) for v in voices],
        )
        await self.write_event(Info(tts=[program]).event())

    # --- speaking side: one job at a time, in order ---------------------------------------------

    async def _work(self) -> None:
        failed_group = 0  # after an error, the rest of that synthesize or text stream is dropped
        try:
            while True:
                job = await self.jobs.get()
                if isinstance(job, EndOfStream):
                    await self.write_event(SynthesizeStopped().event())
                elif job.group != failed_group and not await self._speak(job):
                    failed_group = job.group
        except ConnectionError:  # the client is gone; the read side ends the connection
            log.info("wyoming client gone while speaking")

    async def _speak(self, job: Say) -> bool:
        fmt = {"rate": SAMPLE_RATE_HZ, "width": 2, "channels": 1}
        started = not job.is_first  # a plain synthesize split in pieces sends one audio-start
        speech = self.api.speak(job.text, job.voice)
        try:
            async for pcm in speech:
                if not started:
                    await self.write_event(AudioStart(**fmt).event())
                    started = True
                await self.write_event(AudioChunk(audio=pcm, **fmt).event())
        except SpeechAPIError as e:
            log.warning("wyoming synthesize failed: %s (%s)", e.message, e.code)
            if started:
                await self.write_event(AudioStop().event())
            await self.write_event(Error(text=e.message, code=e.code).event())
            return False
        finally:
            await speech.aclose()
        if not started:
            await self.write_event(AudioStart(**fmt).event())
        if job.is_last:
            await self.write_event(AudioStop().event())
        return True


def _pieces(text: str) -> list[str]:
    """The text in requests the API accepts (at most MAX_INPUT_CHARS each); none if blank."""
    if not text.strip():
        return []
    return [text] if len(text) <= MAX_INPUT_CHARS else split_text(text, MAX_INPUT_CHARS)
