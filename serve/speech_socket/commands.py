"""What a dialect's events are translated into (Session, session.py, carries them out), and
what a dialect offers the socket: the seam between the two translators (csm.py, omni.py) and
the socket's life, typed both ways."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..settings import ServerSettings
from .events import SessionConfig
from .presenters import Outbox
from .response import Presenter


class Session(Protocol):
    settings: ServerSettings
    outbox: Outbox
    config: SessionConfig  # what the next response is spoken with

    def close(self, code: int, reason: str) -> None:
        """End the socket once this event is handled (what was said is spoken first)."""

    def is_taking_text(self) -> bool:
        """Whether a response takes text now."""

    def count(self, text: str, event_id: str | None = None) -> bool:
        """Whether `text` fits the current response's text bound (else an error)."""

    async def speak(self, piece: str, presenter: Callable[[], Presenter]) -> None:
        """Add a piece to the response taking text (a new one, framed by `presenter()`, if none)."""

    async def end_response(self) -> bool:
        """The taking response takes no more text; False if there was none."""

    async def clear_response(self) -> int:
        """Drop the taking response's text not yet spoken; the characters dropped."""

    async def cancel_responses(self) -> None:
        """Stop every live response now (rows freed)."""

    async def drain_responses(self) -> None:
        """Wait until every live response has spoken."""


class Dialect(Protocol):
    """A dialect: its events read and translated into the session's commands, its errors shaped."""

    async def event(self, raw: dict) -> None: ...

    def error(self, message: str, param: str | None = None, code: str = "invalid_request",
              event_id: str | None = None, fatal: bool = False) -> None: ...

    def wait_s(self) -> float:
        """How long the socket waits for the client's next event."""

    async def on_quiet(self) -> bool:
        """No event for wait_s(): whether that was a pause in the text (then spoken), not idleness."""
