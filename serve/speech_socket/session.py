"""One text-in WebSocket: reads the client's messages and hands each event to its dialect
(csm.py, omni.py: two equal translators of their own events into this session's commands),
which cuts the text into speakable pieces (serve/text_stream.py) for responses (response.py),
one speaking at a time.

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
from collections.abc import Callable
from typing import Literal

from starlette.websockets import WebSocket, WebSocketState

from ..settings import ServerSettings
from ..speech import SpeechService
from .commands import Dialect
from .csm import CsmDialect, csm_error
from .events import OMNI_TYPES, SessionConfig, SessionCreated
from .omni import OmniDialect
from .presenters import Outbox
from .response import Presenter, Response

log = logging.getLogger(__name__)
HELLO_S = 0.25  # a client that sends nothing first gets session.created after this
DialectName = Literal["csm", "omni"]


class SpeechSocket:
    """The socket's life (read, time out, close, drain) and the session's commands (commands.Session)."""

    def __init__(self, ws: WebSocket, speech: SpeechService, settings: ServerSettings, socket_id: str,
                 dialect: DialectName | None) -> None:
        self.ws, self.speech, self.settings, self.id = ws, speech, settings, socket_id
        self.outbox = Outbox(self._send, settings.ws_max_send_buffer_bytes, self._overflowed)
        self.config = SessionConfig()  # what the next response is spoken with (set by the dialect)
        self.dialect: Dialect | None = None
        self.response: Response | None = None  # the response taking text now
        self._live: set[Response] = set()  # responses not yet ended (the newest taking text, older speaking)
        self._last: asyncio.Task | None = None
        self._num_responses = self._num_chars = 0
        self._close: tuple[int, str] | None = None
        self._aborted = False
        self._named = dialect

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
            await self.cancel_responses()
            if not self._aborted:
                await self._drain(sender)
            sender.cancel()
            code, reason = self._close or (1000, "")
            if self.ws.application_state == WebSocketState.CONNECTED:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.ws.close(code, reason), 2)

    async def _drain(self, sender: asyncio.Task) -> None:
        await self.drain_responses()  # finishing: everything said is spoken first
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

    def _choose(self, name: DialectName) -> None:
        if name == "csm":
            self.dialect = CsmDialect(self)
            self.outbox.event(SessionCreated(session=self.config))
        else:
            self.dialect = OmniDialect(self)

    async def _read(self) -> None:
        if self._named is not None:
            self._choose(self._named)
        while self._close is None:
            wait_s = self.dialect.wait_s() if self.dialect is not None else HELLO_S
            try:
                message = await asyncio.wait_for(self.ws.receive(), wait_s)
            except TimeoutError:
                await self._timed_out()
                continue
            if message["type"] == "websocket.disconnect":
                return
            await self._message(message)

    async def _timed_out(self) -> None:
        if self.dialect is None:  # a client waiting for session.created
            self._choose("csm")
        elif await self.dialect.on_quiet():  # a pause in the text: spoken
            return
        elif not any(r.is_speaking for r in self._live):  # a response waiting for text holds a row: idle too
            self._error(f"idle: no event for {self.settings.ws_idle_timeout_s:g} s", code="idle_timeout")
            self.close(1000, "idle timeout")

    async def _message(self, message: dict) -> None:
        text = message.get("text")
        if text is None:
            self._error("binary frames are not accepted: send JSON text events", code="invalid_message")
            return
        if len(text.encode()) > self.settings.ws_max_message_bytes:
            self._error(f"message too large: at most {self.settings.ws_max_message_bytes} bytes", code="message_too_large")
            self.close(1009, "message too large")
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
            self._choose("omni" if raw["type"] in OMNI_TYPES else "csm")
        await self.dialect.event(raw)

    def _error(self, message: str, param: str | None = None, code: str = "invalid_request",
               event_id: str | None = None, fatal: bool = False) -> None:
        """An in-band error in the dialect's shape (csm-serve's before one is chosen)."""
        if self.dialect is None:
            csm_error(self.outbox, message, param, code, event_id)
        else:
            self.dialect.error(message, param, code, event_id, fatal)

    # ---- the session's commands (what the dialects translate their events into) ----------------
    def close(self, code: int, reason: str) -> None:
        """End the socket once this event is handled (what was said is spoken first)."""
        self._close = (code, reason)

    def is_taking_text(self) -> bool:
        return self.response is not None and self.response.is_open

    def count(self, text: str, event_id: str | None = None) -> bool:
        """Whether `text` fits the current response's text bound (else an error)."""
        if self._num_chars + len(text) > self.settings.ws_max_text_chars:
            self._error(f"text over the bound: at most {self.settings.ws_max_text_chars} characters per response",
                        param="text", code="text_too_long", event_id=event_id)
            return False
        self._num_chars += len(text)
        return True

    async def speak(self, piece: str, presenter: Callable[[], Presenter]) -> None:
        """Add a piece to the response taking text (a new one, framed by `presenter()`, if none)."""
        if not self.is_taking_text():
            self._num_responses += 1
            self.response = Response(f"{self.id}_{self._num_responses}", self.config, self.speech,
                                     self.speech.backend, presenter(), self.settings.model_id, after=self._last)
            self._live.add(self.response)
        response = self.response
        await response.submit(piece)
        if response.task is not self._last:
            self._last = response.task
            response.task.add_done_callback(lambda _: self._live.discard(response))

    async def end_response(self) -> bool:
        """The taking response takes no more text; False if there was none."""
        response, self.response, self._num_chars = self.response, None, 0
        if response is None:
            return False
        await response.finish()
        return True

    async def clear_response(self) -> int:
        """Drop the taking response's text not yet spoken; the characters dropped."""
        return await self.response.clear() if self.response is not None else 0

    async def cancel_responses(self) -> None:
        """Stop every live response now (rows freed). Each is asked to stop first, then each
        awaited: one waiting behind the speaking one must not start in between."""
        self.response, self._num_chars = None, 0
        live = list(self._live)
        for response in live:
            response.request_cancel()
        for response in live:
            await response.cancel()

    async def drain_responses(self) -> None:
        """Wait until every live response has spoken."""
        for response in list(self._live):
            with contextlib.suppress(BaseException):
                await response.task
