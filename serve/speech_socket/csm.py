"""csm-serve's dialect of the text-in WebSocket, translated into the session's commands
(session.py): session.update (a typed partial, refused while a response takes text),
input_text_buffer.append (text cut into pieces as it comes, a pause in it speaks what came),
commit (the response ends once spoken), clear (unspoken text dropped), response.cancel (stop
now, rows freed), session.finish (speak what was said, then close)."""

from __future__ import annotations

from pydantic import ValidationError

from contract.errors import first_error

from ..schemas import ErrorBody
from ..text_stream import StreamSplitter
from .commands import Session
from .events import (
    CLIENT_EVENTS,
    ErrorEvent,
    SessionConfig,
    SessionFinished,
    SessionUpdated,
    TextCleared,
    TextCommitted,
)
from .presenters import Outbox, RealtimePresenter


def csm_error(outbox: Outbox, message: str, param: str | None = None, code: str = "invalid_request",
              event_id: str | None = None) -> None:
    outbox.event(ErrorEvent(event_id=event_id, error=ErrorBody(
        message=message, type="invalid_request_error", param=param, code=code)))


class CsmDialect:
    def __init__(self, socket: Session) -> None:
        self.socket, self.settings = socket, socket.settings
        self.splitter = StreamSplitter(self.settings.segment_max_chars, self.settings.ws_clause_min_words)

    def error(self, message: str, param: str | None = None, code: str = "invalid_request",
              event_id: str | None = None, fatal: bool = False) -> None:
        csm_error(self.socket.outbox, message, param, code, event_id)  # never fatal here: the socket goes on

    def is_taking_text(self) -> bool:
        return self.socket.is_taking_text() or bool(self.splitter.pending)

    def wait_s(self) -> float:
        """How long the socket waits for the next event: a pause in the text speaks what came."""
        return self.settings.ws_flush_after_s if self.splitter.pending else self.settings.ws_idle_timeout_s

    async def on_quiet(self) -> bool:
        """No event for wait_s(): whether that was a pause in the text (then spoken), not idleness."""
        if not self.splitter.pending:
            return False
        await self._speak(self.splitter.flush())
        return True

    async def event(self, raw: dict) -> None:
        event_id = raw.get("event_id") if isinstance(raw.get("event_id"), str) else None
        try:
            event = CLIENT_EVENTS.validate_python(raw)
        except ValidationError as e:
            first = first_error(e, drop=1)
            param, unknown = first.param, first.type == "union_tag_invalid"
            message = f"Unknown event type: {raw['type']}" if unknown else f"{param}: {first.message}"
            self.error(message, param, "unknown_event" if unknown else "invalid_value", event_id)
            return
        socket = self.socket
        if event.type == "session.update":
            self._update(event.changes(), event_id)
        elif event.type == "input_text_buffer.append":
            if socket.count(event.text, event_id):
                await self._speak(self.splitter.append(event.text))
        elif event.type in ("input_text_buffer.commit", "session.finish"):
            await self._speak(self.splitter.flush())
            await socket.end_response()
            if event.type == "session.finish":
                await socket.drain_responses()
                socket.outbox.event(SessionFinished())
                socket.close(1000, "session finished")
            else:
                socket.outbox.event(TextCommitted())
        elif event.type == "input_text_buffer.clear":
            dropped = len(self.splitter.clear()) + await socket.clear_response()
            socket.outbox.event(TextCleared(num_chars=dropped))
        elif event.type == "response.cancel":
            self.splitter.clear()
            await socket.cancel_responses()

    async def _speak(self, pieces: list[str]) -> None:
        for piece in pieces:
            await self.socket.speak(piece, lambda: RealtimePresenter(self.socket.outbox, self.settings.retry_after_s))

    def _update(self, changes: dict, event_id: str | None) -> None:
        if self.is_taking_text():
            self.error("session.update cannot change a response in progress: commit it first", "session",
                       "response_in_progress", event_id)
            return
        try:
            config = SessionConfig.model_validate({**self.socket.config.model_dump(exclude_none=True), **changes})
        except ValidationError as e:
            first = first_error(e)
            param = ".".join(["session", *([first.param] if first.param else [])])
            self.error(f"{param}: {first.message}", param, "invalid_value", event_id)
            return
        if config.conversation is not None:
            self.error("conversations are not served yet", "session.conversation", "unsupported", event_id)
            return
        self.socket.config = config
        self.socket.outbox.event(SessionUpdated(session=config))
