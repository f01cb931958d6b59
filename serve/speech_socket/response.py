"""One response of the text-in WebSocket: the pieces of text it is given, spoken in order by
ONE speech stream (one engine row, one Mimi row: the voice and the audio run on across
pieces with no seam), the first piece starting it and the next ones fed to it as they come
(contract/text_feed.py). Responses of a socket run one after another, never two at once.

What it hears goes to a `Presenter` (the dialect's framing, presenters.py) as typed calls;
it never touches the socket itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from contract.backend import SpeechBackend, TextFeedBoth
from contract.errors import ErrorInfo, ReplicaError
from contract.text_feed import PieceDone
from models.params import SAMPLES_PER_FRAME

from ..speech import SpeechService, SpeechStream
from .events import SessionConfig

log = logging.getLogger(__name__)
Status = Literal["completed", "cancelled", "failed"]


@dataclass(frozen=True)
class ResponseEnd:
    status: Status
    num_chars: int  # text spoken (submitted pieces)
    num_frames: int  # audio frames out
    error: ErrorInfo | None = None


class Presenter(Protocol):
    async def started(self, response: Response) -> None: ...

    async def audio(self, response: Response, pcm: np.ndarray) -> None:
        """A chunk of the response's audio (float32, 24 kHz)."""

    async def piece_done(self, response: Response, piece: PieceDone) -> None: ...

    async def ended(self, response: Response, end: ResponseEnd) -> None: ...


class Response:
    def __init__(self, response_id: str, config: SessionConfig, speech: SpeechService, backend: SpeechBackend,
                 presenter: Presenter, default_model: str, after: asyncio.Task | None = None) -> None:
        """`after`: the socket's previous response (this one starts when it has ended)."""
        self.id, self.config = response_id, config
        self._speech, self._backend, self._presenter, self._default_model = speech, backend, presenter, default_model
        self._after = after
        self.pieces: list[str] = []  # every piece submitted, in order
        self._feed: TextFeedBoth | None = None
        self._stream: SpeechStream | None = None
        self._spoken = 0  # pieces whose audio is all out
        self._is_finished = False  # no more pieces will come
        self._is_waiting = False  # the stream has spoken all it was given
        self._is_cancelled = self._is_running = False  # request_cancel called; _run entered
        self.task: asyncio.Task | None = None

    @property
    def is_speaking(self) -> bool:
        """Generating or sending audio (not ended, and not waiting for the client's text)."""
        return self.task is not None and not self.task.done() and not self._is_waiting

    @property
    def is_open(self) -> bool:
        """Takes more pieces: not finished, not cancelled, and its stream has not ended (at
        its max_audio_seconds, or failed): text after that starts a new response."""
        return not self._is_finished and not (self.task is not None and self.task.done())

    async def submit(self, text: str) -> None:
        """Speak `text` after the pieces before it; the first one starts the response."""
        self.pieces.append(text)
        if self.task is None:
            self._feed = self._backend.open_feed()
            self.task = asyncio.create_task(self._run(text), name=f"response {self.id}")
            return
        if self._stream is not None and self._is_waiting:
            self._stream.input_arrived()
            self._is_waiting = False
        await self._feed.put(text)

    async def finish(self) -> None:
        """No more pieces: the response ends once those given are spoken."""
        if not self._is_finished and self._feed is not None:
            await self._feed.close()
        self._is_finished = True

    async def clear(self) -> int:
        """Drop the pieces not yet started; returns their characters."""
        if self._feed is None:
            return 0
        dropped = await self._feed.clear()
        chars = sum(len(p) for p in self.pieces[len(self.pieces) - dropped:]) if dropped else 0
        del self.pieces[len(self.pieces) - dropped:]
        return chars

    def request_cancel(self) -> None:
        """Ask the response to stop (see cancel); returns at once. A task not yet running is
        not cancelled from outside (its coroutine would never run, and the client would get no
        response.done): it sees the request as it starts. Only the first request acts."""
        if self._is_cancelled:  # once: a second cancel would cut the first one's ending short
            return
        self._is_finished = self._is_cancelled = True
        if self.task is not None and not self.task.done() and self._is_running:
            self.task.cancel()

    async def cancel(self) -> None:
        """Stop now: the stream is closed (its engine row freed) and the response ends cancelled."""
        self.request_cancel()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task

    async def _run(self, first: str) -> None:
        self._is_running = True
        frames, status, error = 0, "failed", None
        try:
            if self._is_cancelled:
                raise asyncio.CancelledError
            if self._after is not None:  # the socket's previous response has ended, however it ended
                await asyncio.wait([self._after])
            await self._presenter.started(self)
            request = self.config.request(first, self._default_model)
            self._stream = await self._speech.start(request, "websocket", self.id, feed=self._feed)
            async for item in self._stream.audio():
                if isinstance(item, PieceDone):
                    self._spoken = item.index + 1
                    await self._presenter.piece_done(self, item)
                    if self._spoken == len(self.pieces) and not self._is_finished:
                        self._stream.wait_input()  # the client's pace now, not the server's
                        self._is_waiting = True
                    continue
                await self._presenter.audio(self, item)
                self._stream.sent(len(item))
            frames, status = -(-self._stream.num_samples // SAMPLES_PER_FRAME), "completed"
        except asyncio.CancelledError:
            status = "cancelled"
            frames = -(-self._stream.num_samples // SAMPLES_PER_FRAME) if self._stream is not None else 0
        except ReplicaError as e:
            error = e.info
        except Exception as e:  # never lost silently: logged here, a generic error to the client
            log.error("response %s failed", self.id, exc_info=e)
            error = ErrorInfo(kind="internal", message="The server had an error while speaking.", code="internal_error")
        finally:
            if self._stream is not None:
                await self._stream.aclose()
            if self._feed is not None:
                with contextlib.suppress(Exception):
                    await self._feed.discard()
        chars = sum(len(p) for p in self.pieces[: self._spoken])
        with contextlib.suppress(Exception):  # the socket may be gone
            await self._presenter.ended(self, ResponseEnd(status, chars, frames, error))
