"""One text-in WebSocket: reads the client's events, cuts its text into speakable pieces
(serve/text_stream.py) and hands them to responses (response.py), one speaking at a time.

The dialect is chosen by the client's first event (vLLM-Omni's names, or csm-serve's); a
client that offered the `csm-serve` subprotocol, or sent nothing within HELLO_S, gets
`session.created` at once. Bad events are answered in-band (`error`) and the socket goes
on; what ends it is the client (close, `session.finish`, vLLM-Omni's `session.close`), an
oversized message (close 1009), a client that stops reading (its send buffer full: close
1008, its response cancelled, its row freed), or idleness (no event for
`ws_idle_timeout_s` while nothing is speaking, a response waiting for text included: close
1000). Whatever ends it, its responses
are cancelled and their engine rows freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Literal

from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketState

from contract.errors import first_error

from ..schemas import ErrorBody
from ..settings import ServerSettings
from ..speech import SpeechService
from ..text_stream import StreamSplitter
from .events import (
    CLIENT_EVENTS,
    OMNI_TYPES,
    ErrorEvent,
    OmniError,
    SessionConfig,
    SessionCreated,
    SessionFinished,
    SessionUpdated,
    TextCleared,
    TextCommitted,
)
from .omni import OmniDialect
from .presenters import Outbox, RealtimePresenter
from .response import Presenter, Response

log = logging.getLogger(__name__)
HELLO_S = 0.25  # a client that sends nothing first gets session.created after this
Dialect = Literal["csm", "omni"]


class SpeechSocket(OmniDialect):
    def __init__(self, ws: WebSocket, speech: SpeechService, settings: ServerSettings, socket_id: str,
                 dialect: Dialect | None) -> None:
        self.ws, self.speech, self.settings, self.id, self.dialect = ws, speech, settings, socket_id, dialect
        self.outbox = Outbox(self._send, settings.ws_max_send_buffer_bytes, self._overflowed)
        self.config, self.omni = SessionConfig(), None
        self.splitter = StreamSplitter(settings.segment_max_chars, settings.ws_clause_min_words)
        self.response: Response | None = None  # the response taking text now
        self._live: set[Response] = set()  # responses not yet ended (the newest taking text, older speaking)
        self._last: asyncio.Task | None = None
        self._num_responses = self._utterance = self._num_chars = 0
        self._omni_text = ""  # split_granularity none: the utterance so far
        self._close: tuple[int, str] | None = None
        self._aborted = False

    # ---- the socket's life ---------------------------------------------------------------------
    async def run(self) -> None:
        sender = asyncio.create_task(self.outbox.run(), name=f"ws {self.id} sender")
        self._reader = asyncio.create_task(self._read(), name=f"ws {self.id} reader")
        try:
            await self._reader
        except asyncio.CancelledError:
            if not self._aborted:
                raise
        finally:
            await self._cancel_live()
            if not self._aborted:
                await self._drain(sender)
            sender.cancel()
            code, reason = self._close or (1000, "")
            if self.ws.application_state == WebSocketState.CONNECTED:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.ws.close(code, reason), 2)

    async def _drain(self, sender: asyncio.Task) -> None:
        for response in list(self._live):  # finishing: everything said is spoken first
            with contextlib.suppress(BaseException):
                await response.task
        self.outbox.close()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(sender, 30)

    async def _send(self, message: str | bytes) -> None:
        await (self.ws.send_bytes(message) if isinstance(message, bytes) else self.ws.send_text(message))

    def _overflowed(self) -> None:
        """The client stopped reading: end the socket now (its rows freed by run())."""
        log.warning("ws %s: send buffer full (%d bytes): the client is not reading", self.id, self.outbox.max_bytes)
        self._aborted, self._close = True, (1008, "send buffer full: the client is not reading")
        self._reader.cancel()

    async def _read(self) -> None:
        if self.dialect == "csm":
            self.outbox.event(SessionCreated(session=self.config))
        while self._close is None:
            try:
                message = await asyncio.wait_for(self.ws.receive(), self._wait_s())
            except TimeoutError:
                await self._timed_out()
                continue
            if message["type"] == "websocket.disconnect":
                return
            await self._message(message)

    def _wait_s(self) -> float:
        if self.dialect is None:
            return HELLO_S
        if self.dialect == "csm" and self.splitter.pending:
            return self.settings.ws_flush_after_s
        return self.settings.ws_idle_timeout_s

    async def _timed_out(self) -> None:
        if self.dialect is None:  # a client waiting for session.created
            self.dialect = "csm"
            self.outbox.event(SessionCreated(session=self.config))
        elif self.dialect == "csm" and self.splitter.pending:  # a pause in the text: speak what came
            for piece in self.splitter.flush():
                await self._speak(piece)
        elif not any(r.is_speaking for r in self._live):  # a response waiting for text holds a row: idle too
            self._error(f"idle: no event for {self.settings.ws_idle_timeout_s:g} s", code="idle_timeout")
            self._close = (1000, "idle timeout")

    async def _message(self, message: dict) -> None:
        text = message.get("text")
        if text is None:
            self._error("binary frames are not accepted: send JSON text events", code="invalid_message")
            return
        if len(text.encode()) > self.settings.ws_max_message_bytes:
            self._error(f"message too large: at most {self.settings.ws_max_message_bytes} bytes", code="message_too_large")
            self._close = (1009, "message too large")
            return
        try:
            raw = json.loads(text)
        except ValueError:
            self._error("Invalid JSON message", code="invalid_json", fatal=True)
            return
        if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
            self._error("WebSocket messages must be JSON objects with a string 'type'", code="invalid_message", fatal=True)
            return
        if self.dialect is None:
            self.dialect = "omni" if raw["type"] in OMNI_TYPES else "csm"
            if self.dialect == "csm":
                self.outbox.event(SessionCreated(session=self.config))
        await (self._omni_event(raw) if self.dialect == "omni" else self._csm_event(raw))

    def _error(self, message: str, param: str | None = None, code: str = "invalid_request",
               event_id: str | None = None, fatal: bool = False) -> None:
        """An in-band error (vLLM-Omni: fatal before its session.config, as it is there)."""
        if self.dialect == "omni":
            self.outbox.event(OmniError(message=message))
            if fatal and self.omni is None:
                self._close = (1008, "session.config expected")
            return
        self.outbox.event(ErrorEvent(event_id=event_id, error=ErrorBody(
            message=message, type="invalid_request_error", param=param, code=code)))

    def _count(self, text: str, event_id: str | None = None) -> bool:
        """Whether `text` fits the current response's text bound (else an error)."""
        if self._num_chars + len(text) > self.settings.ws_max_text_chars:
            self._error(f"text over the bound: at most {self.settings.ws_max_text_chars} characters per response",
                        param="text", code="text_too_long", event_id=event_id)
            return False
        self._num_chars += len(text)
        return True

    # ---- responses -----------------------------------------------------------------------------
    async def _speak(self, piece: str, presenter: Presenter | None = None) -> None:
        if self.response is None or not self.response.is_open:
            self._num_responses += 1
            presenter = presenter or RealtimePresenter(self.outbox, self.settings.retry_after_s)
            self.response = Response(f"{self.id}_{self._num_responses}", self.config, self.speech,
                                     self.speech.backend, presenter, self.settings.model_id, after=self._last)
            self._live.add(self.response)
        response = self.response
        await response.submit(piece)
        if response.task is not self._last:
            self._last = response.task
            response.task.add_done_callback(lambda _: self._live.discard(response))

    async def _end_response(self) -> bool:
        """The taking response takes no more text; False if there was none."""
        response, self.response, self._num_chars = self.response, None, 0
        if response is None:
            return False
        await response.finish()
        return True

    async def _cancel_all(self) -> None:
        self.splitter.clear()
        self.response, self._num_chars, self._omni_text = None, 0, ""
        await self._cancel_live()

    async def _cancel_live(self) -> None:
        """Every live response asked to stop first, then each awaited: one waiting behind the
        speaking one must not start in between."""
        live = list(self._live)
        for response in live:
            response.request_cancel()
        for response in live:
            await response.cancel()

    # ---- csm-serve's dialect -------------------------------------------------------------------
    async def _csm_event(self, raw: dict) -> None:
        event_id = raw.get("event_id") if isinstance(raw.get("event_id"), str) else None
        try:
            event = CLIENT_EVENTS.validate_python(raw)
        except ValidationError as e:
            first = first_error(e, drop=1)
            param, unknown = first.param, first.type == "union_tag_invalid"
            message = f"Unknown event type: {raw['type']}" if unknown else f"{param}: {first.message}"
            self._error(message, param, "unknown_event" if unknown else "invalid_value", event_id)
            return
        if event.type == "session.update":
            self._update(event.changes(), event_id)
        elif event.type == "input_text_buffer.append":
            if self._count(event.text, event_id):
                for piece in self.splitter.append(event.text):
                    await self._speak(piece)
        elif event.type in ("input_text_buffer.commit", "session.finish"):
            for piece in self.splitter.flush():
                await self._speak(piece)
            await self._end_response()
            if event.type == "session.finish":
                await self._drain_responses()
                self.outbox.event(SessionFinished())
                self._close = (1000, "session finished")
            else:
                self.outbox.event(TextCommitted())
        elif event.type == "input_text_buffer.clear":
            dropped = len(self.splitter.clear()) + (await self.response.clear() if self.response else 0)
            self.outbox.event(TextCleared(num_chars=dropped))
        elif event.type == "response.cancel":
            await self._cancel_all()

    async def _drain_responses(self) -> None:
        for response in list(self._live):
            with contextlib.suppress(BaseException):
                await response.task

    def _update(self, changes: dict, event_id: str | None) -> None:
        if (self.response is not None and self.response.is_open) or self.splitter.pending:
            self._error("session.update cannot change a response in progress: commit it first", "session",
                        "response_in_progress", event_id)
            return
        try:
            config = SessionConfig.model_validate({**self.config.model_dump(exclude_none=True), **changes})
        except ValidationError as e:
            first = first_error(e)
            param = ".".join(["session", *([first.param] if first.param else [])])
            self._error(f"{param}: {first.message}", param, "invalid_value", event_id)
            return
        if config.conversation is not None:
            self._error("conversations are not served yet", "session.conversation", "unsupported", event_id)
            return
        self.config = config
        self.outbox.event(SessionUpdated(session=config))
