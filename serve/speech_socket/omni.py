"""vLLM-Omni's dialect of the text-in WebSocket, translated into the session's commands
(session.py): session.config (sticky; refused while an utterance has text), input.text,
input.done (speak, then session.done; the socket stays), session.close; anything before the
config is fatal, as there."""

from __future__ import annotations

from pydantic import ValidationError

from contract.errors import first_error

from ..text import normalize_whitespace, split_text
from ..text_stream import StreamSplitter
from .commands import Session
from .events import OMNI_EVENTS, OmniConfig, OmniError, OmniSessionDone
from .presenters import OmniPresenter

_CLAUSE_MIN_WORDS = {"clause": 1, "sentence": 10**6}  # split_granularity -> StreamSplitter's clause_min_words


class OmniDialect:
    def __init__(self, socket: Session) -> None:
        self.socket, self.settings = socket, socket.settings
        self.config: OmniConfig | None = None  # nothing is accepted before it
        self.splitter = StreamSplitter(self.settings.segment_max_chars, 10**6)
        self.text = ""  # split_granularity none: the utterance so far
        self.utterance = 0  # the index of the utterance taking text

    def error(self, message: str, param: str | None = None, code: str = "invalid_request",
              event_id: str | None = None, fatal: bool = False) -> None:
        """vLLM-Omni's error: a message only; fatal before its session.config, as it is there."""
        self.socket.outbox.event(OmniError(message=message))
        if fatal and self.config is None:
            self.socket.close(1008, "session.config expected")

    def is_taking_text(self) -> bool:
        return self.socket.is_taking_text() or bool(self.text) or bool(self.splitter.pending)

    def wait_s(self) -> float:
        return self.settings.ws_idle_timeout_s

    async def on_quiet(self) -> bool:
        return False  # text is spoken as units complete and at input.done, never on a pause

    async def event(self, raw: dict) -> None:
        try:
            event = OMNI_EVENTS.validate_python(raw)
        except ValidationError as e:
            first = first_error(e)
            unknown = first.type == "union_tag_invalid"
            self.error(f"Unknown message type: {raw['type']}" if unknown else f"Invalid message: {first.message}",
                       fatal=True)
            return
        if self.config is None and event.type != "session.config":
            self.error(f"Expected session.config, got: {event.type}", fatal=True)
            return
        if event.type == "session.config":
            if self.is_taking_text():
                self.error("session.config cannot be applied while an utterance is in progress; send input.done first")
                return
            self.config, self.socket.config = event, event.session()
            self.splitter = StreamSplitter(self.settings.segment_max_chars,
                                           _CLAUSE_MIN_WORDS.get(event.split_granularity, 10**6))
        elif event.type == "input.text":
            if not self.socket.count(event.text):
                return
            if self.config.split_granularity == "none":
                self.text += event.text
            else:
                await self._speak(self.splitter.append(event.text), None)
        elif event.type == "input.done":
            await self._done()
        else:  # session.close: unflushed text is dropped, as vLLM-Omni does
            self.splitter.clear()
            self.text = ""
            await self.socket.cancel_responses()
            self.socket.close(1000, "session closed")

    async def _speak(self, pieces: list[str], whole_text: str | None) -> None:
        """Each piece into the utterance's response (a new one framed by OmniPresenter)."""
        for piece in pieces:
            await self.socket.speak(piece, lambda: OmniPresenter(self.socket.outbox, self.config, self.utterance,
                                                                 whole_text))

    async def _done(self) -> None:
        if self.config.split_granularity == "none":
            text, self.text = self.text, ""
            await self._speak(split_text(text, self.settings.segment_max_chars), normalize_whitespace(text))
        else:
            await self._speak(self.splitter.flush(), None)
        if not await self.socket.end_response():  # nothing to say: the utterance ends at once
            self.socket.outbox.event(OmniSessionDone(utterance_index=self.utterance, total_sentences=0))
        self.utterance += 1
