"""vLLM-Omni's dialect of the text-in WebSocket, as a part of SpeechSocket (session.py owns
the state it uses: config, splitter, responses, outbox): session.config (sticky; refused
while an utterance has text), input.text, input.done (speak, then session.done; the socket
stays), session.close; anything before the config is fatal, as there."""

from __future__ import annotations

from pydantic import ValidationError

from contract.errors import first_error

from ..text import normalize_whitespace, split_text
from ..text_stream import StreamSplitter
from .events import OMNI_EVENTS, OmniSessionDone
from .presenters import OmniPresenter

_CLAUSE_MIN_WORDS = {"clause": 1, "sentence": 10**6}  # split_granularity -> StreamSplitter's clause_min_words


class OmniDialect:
    async def _omni_event(self, raw: dict) -> None:
        try:
            event = OMNI_EVENTS.validate_python(raw)
        except ValidationError as e:
            first = first_error(e)
            unknown = first.type == "union_tag_invalid"
            self._error(f"Unknown message type: {raw['type']}" if unknown else f"Invalid message: {first.message}",
                        fatal=True)
            return
        if self.omni is None and event.type != "session.config":
            self._error(f"Expected session.config, got: {event.type}", fatal=True)
            return
        if event.type == "session.config":
            if (self.response is not None and self.response.is_open) or self._omni_text or self.splitter.pending:
                self._error("session.config cannot be applied while an utterance is in progress; send input.done first")
                return
            self.omni, self.config = event, event.session()
            self.splitter = StreamSplitter(self.settings.segment_max_chars,
                                           _CLAUSE_MIN_WORDS.get(event.split_granularity, 10**6))
        elif event.type == "input.text":
            if not self._count(event.text):
                return
            if self.omni.split_granularity == "none":
                self._omni_text += event.text
            else:
                for piece in self.splitter.append(event.text):
                    await self._speak(piece, self._omni_presenter(None))
        elif event.type == "input.done":
            await self._omni_done()
        else:  # session.close: unflushed text is dropped, as vLLM-Omni does
            await self._cancel_all()
            self._close = (1000, "session closed")

    def _omni_presenter(self, whole_text: str | None) -> OmniPresenter | None:
        """A presenter for a new utterance (None while one takes text: _speak keeps its own)."""
        if self.response is not None and self.response.is_open:
            return None
        return OmniPresenter(self.outbox, self.omni, self._utterance, whole_text)

    async def _omni_done(self) -> None:
        if self.omni.split_granularity == "none":
            text, self._omni_text = self._omni_text, ""
            pieces, whole = split_text(text, self.settings.segment_max_chars), normalize_whitespace(text)
        else:
            pieces, whole = self.splitter.flush(), None
        presenter = self._omni_presenter(whole)
        for piece in pieces:
            await self._speak(piece, presenter)
        if not await self._end_response():  # nothing to say: the utterance ends at once
            self.outbox.event(OmniSessionDone(utterance_index=self._utterance, total_sentences=0))
        self._utterance += 1
