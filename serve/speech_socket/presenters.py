"""How a response is framed on the socket, per dialect, and the socket's bounded send buffer.

csm-serve's dialect: response.created, the audio (base64 `response.audio.delta` events or
binary frames) as one continuous stream in the session's format, `response.segment.done`
after each piece's audio (its text and where it lies in the audio, seconds at the output's
speed), then `response.done` with usage (and an `error` event before it if it failed).
vLLM-Omni's: each unit (a sentence, a clause, or the whole utterance, by
split_granularity) framed by `audio.start` / `audio.done`, its audio as raw PCM frames
(stream_audio) or one binary frame holding the unit's whole file, `session.done` after the
utterance (input.done).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable

import numpy as np
from pydantic import BaseModel

from contract.errors import ErrorInfo
from contract.text_feed import PieceDone

from ..audio import AudioEncoder, make_encoder
from ..errors import api_error, error_body, retry_after
from ..schemas import ErrorBody, Usage
from .events import (
    AudioDelta,
    ErrorEvent,
    OmniAudioDone,
    OmniAudioStart,
    OmniConfig,
    OmniError,
    OmniSessionDone,
    ResponseCreated,
    ResponseDone,
    ResponseRef,
    ResponseSummary,
    SegmentDone,
)
from .response import Response, ResponseEnd

log = logging.getLogger(__name__)


class Outbox:
    """Messages to the client, sent in order by one task; at most `max_bytes` waiting. A client
    that does not read lets it fill: then `on_overflow` runs once and nothing more is queued."""

    def __init__(self, send: Callable, max_bytes: int, on_overflow: Callable[[], None]) -> None:
        self._send, self.max_bytes, self._on_overflow = send, max_bytes, on_overflow
        self._queue: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self.num_bytes, self.is_overflowed = 0, False

    def put(self, message: str | bytes) -> None:
        if self.is_overflowed:
            return
        if self.num_bytes + len(message) > self.max_bytes:
            self.is_overflowed = True
            self._on_overflow()
            return
        self.num_bytes += len(message)
        self._queue.put_nowait(message)

    def event(self, event: BaseModel) -> None:
        self.put(event.model_dump_json(exclude_none=False))

    async def run(self) -> None:
        """Send until None is queued (or the socket fails)."""
        while (message := await self._queue.get()) is not None:
            self.num_bytes -= len(message)
            await self._send(message)

    def close(self) -> None:
        self._queue.put_nowait(None)


def error_record(info: ErrorInfo, request_id: str, retry_after_s: int) -> ErrorBody:
    """The error as HTTP's body would carry it (message, type by status, param, code)."""
    error = api_error(info, request_id, retry_after_s)
    return ErrorBody(**error_body(error.status, error.message, error.param, error.code)["error"])


class RealtimePresenter:
    def __init__(self, outbox: Outbox, retry_after_s: int) -> None:
        self.outbox, self.retry_after_s = outbox, retry_after_s
        self._encoders: dict[str, AudioEncoder] = {}

    def _send_audio(self, response: Response, data: bytes) -> None:
        if not data:
            return
        if response.config.audio_transport == "binary":
            self.outbox.put(data)
        else:
            self.outbox.event(AudioDelta(response_id=response.id, delta=base64.b64encode(data).decode()))

    async def started(self, response: Response) -> None:
        config = response.config
        self._encoders[response.id] = make_encoder(config.response_format, config.speed, config.sample_rate)
        self.outbox.event(ResponseCreated(response=ResponseRef(id=response.id)))

    async def audio(self, response: Response, pcm: np.ndarray) -> None:
        self._send_audio(response, self._encoders[response.id].encode(pcm))

    async def piece_done(self, response: Response, piece: PieceDone) -> None:
        speed = response.config.speed
        self.outbox.event(SegmentDone(response_id=response.id, index=piece.index, text=piece.text,
                                      start_s=round(piece.start_s / speed, 4), end_s=round(piece.end_s / speed, 4)))

    async def ended(self, response: Response, end: ResponseEnd) -> None:
        encoder = self._encoders.pop(response.id, None)
        if encoder is not None and end.status != "failed":
            self._send_audio(response, encoder.flush())
        if end.error is not None:
            wait_ms = (round(retry_after(end.error, self.retry_after_s) * 1000) if end.error.kind == "overloaded"
                       else None)
            self.outbox.event(ErrorEvent(error=error_record(end.error, response.id, self.retry_after_s),
                                         retry_after_ms=wait_ms))
        usage = Usage(input_tokens=end.num_chars, output_tokens=end.num_frames,
                      total_tokens=end.num_chars + end.num_frames)
        self.outbox.event(ResponseDone(response=ResponseSummary(id=response.id, status=end.status, usage=usage)))


class OmniPresenter:
    """One utterance per response (`utterance_index`); its units numbered by `sentence_index`."""

    def __init__(self, outbox: Outbox, config: OmniConfig, utterance_index: int, whole_text: str | None) -> None:
        """`whole_text`: the utterance's text when it is one unit (split_granularity none)."""
        self.outbox, self.config, self.utterance = outbox, config, utterance_index
        self.whole_text = whole_text
        self.unit, self.unit_bytes, self.is_unit_open = 0, 0, False
        self._file: AudioEncoder | None = None  # the unit's file (not stream_audio), and its bytes so far
        self._held = b""
        self._pcm = make_encoder("pcm", sample_rate=config.sample_rate)

    def _open_unit(self, response: Response, with_rate: bool) -> None:
        text = self.whole_text if self.whole_text is not None else (
            response.pieces[self.unit] if self.unit < len(response.pieces) else "")
        rate = {"sample_rate": self.config.rate, "channels": 1} if with_rate else {}
        self.outbox.event(OmniAudioStart(utterance_index=self.utterance, sentence_index=self.unit, sentence_text=text,
                                         format=self.config.response_format, **rate))
        self.is_unit_open, self.unit_bytes = True, 0
        if not self.config.stream_audio:
            config = self.config
            self._file, self._held = make_encoder(config.response_format, config.speed, config.sample_rate), b""

    def _close_unit(self, error: bool) -> None:
        if self._file is not None and not error:  # the unit's whole file, in one binary frame
            data = self._held + self._file.flush()
            if data:
                self.outbox.put(data)
                self.unit_bytes += len(data)
        self._file, self._held = None, b""
        self.outbox.event(OmniAudioDone(utterance_index=self.utterance, sentence_index=self.unit,
                                        total_bytes=self.unit_bytes, error=error))
        self.unit, self.is_unit_open = self.unit + 1, False

    async def started(self, response: Response) -> None:
        if not self.config.stream_audio:  # vLLM-Omni announces a file unit before generating it
            self._open_unit(response, with_rate=False)

    async def audio(self, response: Response, pcm: np.ndarray) -> None:
        if not self.is_unit_open:
            self._open_unit(response, with_rate=self.config.stream_audio)
        if self._file is not None:
            self._held += self._file.encode(pcm)
            return
        data = self._pcm.encode(pcm)
        if data:
            self.outbox.put(data)
            self.unit_bytes += len(data)

    async def piece_done(self, response: Response, piece: PieceDone) -> None:
        if self.whole_text is not None:  # one unit for the whole utterance: it ends with the response
            return
        if not self.is_unit_open:
            self._open_unit(response, with_rate=self.config.stream_audio)
        self._close_unit(error=False)
        if not self.config.stream_audio and piece.index + 1 < len(response.pieces):
            self._open_unit(response, with_rate=False)

    async def ended(self, response: Response, end: ResponseEnd) -> None:
        if end.error is not None:
            if not self.is_unit_open:
                self._open_unit(response, with_rate=False)
            self.outbox.event(OmniError(message=end.error.message))
            self._close_unit(error=True)
        elif self.is_unit_open:
            self._close_unit(error=end.status != "completed")
        if end.status != "cancelled":
            self.outbox.event(OmniSessionDone(utterance_index=self.utterance, total_sentences=self.unit))
