"""One Wyoming connection: `describe` -> `info`; `synthesize` -> audio-start, audio-chunk...,
audio-stop, streamed as the API sends the audio; streaming synthesis (`synthesize-start`,
`synthesize-chunk`..., `synthesize-stop`) goes through the API's text-in WebSocket: the
chunks are sent as they come, the server speaks each sentence as soon as it is complete, all
of them as one stream (no gap between sentences, the voice carried across), each framed by
its own audio-start/-stop, then `synthesize-stopped`.

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

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Attribution, Describe, Info, TtsProgram, TtsVoice
from wyoming.server import AsyncEventHandler
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped

from serve.schemas import MAX_INPUT_CHARS
from serve.text import split_text

from .api import SpeechAPI, SpeechAPIError
from .text_stream import SentenceDone, TextStream

log = logging.getLogger(__name__)
VERSION = "0.1.0"
LANGUAGES = ["en"]  # CSM-1B speaks English


@dataclass(frozen=True)
class Say:
    """Speak `text` (at most MAX_INPUT_CHARS) as part of `group`, one plain `synthesize` (its
    pieces share one audio-start/-stop: `is_first`/`is_last`), over HTTP."""

    text: str
    voice: str
    group: int
    is_first: bool = True
    is_last: bool = True


@dataclass(frozen=True)
class EndOfStream:
    """A text stream whose socket never opened ends here (`synthesize-stopped`)."""

    group: int


@dataclass
class _TextStream:
    """A streaming synthesis: its socket (None if it could not open) and whether any text came."""

    group: int
    stream: TextStream | None
    has_text: bool = False


@dataclass(frozen=True)
class SpeakStream:
    """Play a text stream's audio as the server speaks it (each sentence framed by its own
    audio-start/-stop, as other Wyoming servers do), then `synthesize-stopped`."""

    text_stream: _TextStream


class SpeechEventHandler(AsyncEventHandler):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, api: SpeechAPI) -> None:
        super().__init__(reader, writer)
        self.api = api
        self.jobs: asyncio.Queue[Say | SpeakStream | EndOfStream] = asyncio.Queue()
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
            await self._start_stream(self._voice(SynthesizeStart.from_event(event).voice))
        elif SynthesizeChunk.is_type(event.type) and self.text_stream is not None:
            await self._stream_text(SynthesizeChunk.from_event(event).text)
        elif SynthesizeStop.is_type(event.type) and self.text_stream is not None:
            await self._stop_stream()
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

    async def _start_stream(self, voice: str) -> None:
        group = self._next_group()
        try:
            stream = await TextStream.open(self.api.settings, await self.api.model(), voice)
        except SpeechAPIError as e:
            log.warning("wyoming text stream failed to open: %s (%s)", e.message, e.code)
            await self.write_event(Error(text=e.message, code=e.code).event())
            self.text_stream = _TextStream(group, None)
            return
        self.text_stream = _TextStream(group, stream)
        self.jobs.put_nowait(SpeakStream(self.text_stream))  # its audio is read as soon as it comes

    async def _stream_text(self, text: str) -> None:
        text_stream = self.text_stream
        if text_stream.stream is None or not text:
            return
        text_stream.has_text = text_stream.has_text or bool(text.strip())
        with contextlib.suppress(SpeechAPIError):  # a stream the server ended: its reader reports why
            await text_stream.stream.append(text)

    async def _stop_stream(self) -> None:
        text_stream, self.text_stream = self.text_stream, None
        if text_stream.stream is None:
            self.jobs.put_nowait(EndOfStream(text_stream.group))
        elif not text_stream.has_text:  # nothing to say: the reader ends at the close
            await text_stream.stream.aclose()
        else:
            with contextlib.suppress(SpeechAPIError):
                await text_stream.stream.commit()

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
                elif isinstance(job, SpeakStream):
                    await self._speak_stream(job.text_stream)
                elif job.group != failed_group and not await self._speak(job):
                    failed_group = job.group
        except ConnectionError:  # the client is gone; the read side ends the connection
            log.info("wyoming client gone while speaking")

    async def _speak_stream(self, text_stream: _TextStream) -> None:
        fmt = {"rate": self.api.settings.sample_rate, "width": 2, "channels": 1}
        started = False
        try:
            async for item in text_stream.stream.audio():
                if isinstance(item, SentenceDone):
                    if started:
                        await self.write_event(AudioStop().event())
                        started = False
                    continue
                if not started:
                    await self.write_event(AudioStart(**fmt).event())
                    started = True
                await self.write_event(AudioChunk(audio=item, **fmt).event())
        except SpeechAPIError as e:
            if started:
                await self.write_event(AudioStop().event())
            if text_stream.has_text:  # closed with nothing said is no error
                log.warning("wyoming text stream failed: %s (%s)", e.message, e.code)
                await self.write_event(Error(text=e.message, code=e.code).event())
        finally:
            await text_stream.stream.aclose()
        await self.write_event(SynthesizeStopped().event())

    async def _speak(self, job: Say) -> bool:
        fmt = {"rate": self.api.settings.sample_rate, "width": 2, "channels": 1}
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
