"""The Wyoming edge's client of csm-serve's text-in WebSocket (/v1/audio/speech/stream): a
text stream's pieces go to the server as they come, the server cuts them into sentences and
speaks them as ONE stream (no gap between sentences, the voice carried across), and each
sentence's PCM comes back followed by its `response.segment.done`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from pydantic import TypeAdapter, ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from serve.speech_socket.events import ErrorEvent, ResponseDone, SegmentDone, ServerEvent

from .api import SpeechAPIError, WyomingSettings

_EVENTS = TypeAdapter(ServerEvent)


@dataclass(frozen=True)
class SentenceDone:
    text: str


class TextStream:
    """One streamed synthesis: `append` text as it comes, `commit` at its end, and iterate
    `audio()` for raw PCM bytes (16-bit mono at the settings' sample_rate) and a SentenceDone after each sentence.
    Closing the socket (`aclose`) stops the speech on the server and frees its row."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, settings: WyomingSettings, model: str, voice: str) -> TextStream:
        url = settings.api_url.replace("http", "ws", 1).rstrip("/") + "/v1/audio/speech/stream"
        headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else None
        try:
            ws = await connect(url, additional_headers=headers, subprotocols=["csm-serve"],
                               open_timeout=settings.timeout_s)
        except (OSError, WebSocketException, TimeoutError) as e:
            raise SpeechAPIError(f"the speech API is unreachable: {type(e).__name__}: {e}", "unavailable") from None
        stream = cls(ws)
        session = {"model": model, "voice": voice, "response_format": "pcm", "audio_transport": "binary",
                   "sample_rate": settings.sample_rate}
        if settings.max_audio_seconds is not None:
            session["max_audio_seconds"] = settings.max_audio_seconds
        await stream._send({"type": "session.update", "session": session})
        return stream

    async def _send(self, event: dict) -> None:
        try:
            await self.ws.send(json.dumps(event))
        except WebSocketException as e:
            raise SpeechAPIError(f"the speech API closed the stream: {e}", "unavailable") from None

    async def append(self, text: str) -> None:
        await self._send({"type": "input_text_buffer.append", "text": text})

    async def commit(self) -> None:
        await self._send({"type": "input_text_buffer.commit"})

    async def audio(self) -> AsyncIterator[bytes | SentenceDone]:
        """PCM and sentence ends until the response is done; SpeechAPIError if it failed."""
        error: SpeechAPIError | None = None
        try:
            async for message in self.ws:
                if isinstance(message, bytes):
                    yield message
                    continue
                try:
                    event = _EVENTS.validate_json(message)
                except ValidationError:
                    continue  # an event this client does not need
                if isinstance(event, SegmentDone):
                    yield SentenceDone(event.text)
                elif isinstance(event, ErrorEvent):
                    error = SpeechAPIError(event.error.message, event.error.code or event.error.type)
                elif isinstance(event, ResponseDone):
                    if error is not None:
                        raise error
                    return
        except WebSocketException as e:
            raise SpeechAPIError(f"the speech stream was cut: {e}", "unavailable") from None
        raise error or SpeechAPIError("the speech API closed the stream", "unavailable")

    async def aclose(self) -> None:
        await self.ws.close()
