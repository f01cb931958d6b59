"""csm-serve as a Pipecat TTS service, over its text-in WebSocket (/v1/audio/speech/stream).

The LLM's tokens go into the socket as they come (`input_text_buffer.append`); the server cuts
them into sentences itself and speaks a whole turn as ONE stream (one voice, no gap between
sentences), so Pipecat's own sentence aggregation is not needed: TextAggregationMode.TOKEN is
the default. The end of the turn commits it (`input_text_buffer.commit`). Audio comes back as
raw 16-bit mono PCM binary frames at the pipeline's output rate (the server resamples), each
`response.segment.done` gives the times of the words of the piece it ends, `response.done`
ends the audio context, and an `error` becomes an ErrorFrame.

The wire carries no context id, so one turn's text is on the socket at a time
(`pause_frame_processing`: the next turn waits until this one's audio is out). An
interruption sends `response.cancel` (the server stops at once and frees the engine row) and
then `input_text_buffer.clear`, whose `input_text_buffer.cleared` reply marks the end of
whatever the cancelled response had already sent: everything before it is dropped.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from loguru import logger
from pipecat.frames.frames import ErrorFrame, Frame, InterruptionFrame, TTSAudioRawFrame, TTSStoppedFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessorSetup
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TextAggregationMode, WebsocketTTSService
from pipecat.utils.errors import ErrorCategory
from pipecat.utils.types import NOT_GIVEN, NotGiven
from pydantic import BaseModel, TypeAdapter, ValidationError
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.protocol import State

from serve.speech_socket.events import (
    ErrorEvent,
    ResponseCancel,
    ResponseCreated,
    ResponseDone,
    SegmentDone,
    ServerEvent,
    SessionPatch,
    SessionUpdate,
    TextAppend,
    TextClear,
    TextCleared,
    TextCommit,
)

_EVENTS: TypeAdapter[Any] = TypeAdapter(ServerEvent)
PATH, SUBPROTOCOL = "/v1/audio/speech/stream", "csm-serve"
# The session fields the settings carry (the server's SessionConfig names).
_SESSION_FIELDS = ("model", "voice", "seed", "temperature", "top_k", "speed", "speaker", "conversation",
                   "max_audio_seconds", "priority")
_CATEGORIES = {"invalid_api_key": ErrorCategory.AUTHENTICATION, "overloaded": ErrorCategory.RATE_LIMIT}


@dataclass
class CsmTTSSettings(TTSSettings):
    """Runtime-updatable settings (a `TTSUpdateSettingsFrame(delta=CsmTTSSettings(...))` changes
    them; they apply from the next turn). `None`: the server's default.

    Parameters:
        seed: Sampling seed; the same text and seed give the same audio.
        temperature: Sampling temperature (0: greedy).
        top_k: Top-k sampling.
        speed: Tempo of the audio (0.25 to 4.0).
        speaker: CSM speaker id (default: the voice's).
        conversation: Id of a server-side conversation (POST /v1/audio/conversations) the turn
            is spoken in.
        max_audio_seconds: Cap on one turn's audio.
        priority: "interactive" (real-time admission) or "batch".
    """

    seed: int | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    temperature: float | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    top_k: int | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    speed: float | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    speaker: int | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    conversation: str | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    max_audio_seconds: float | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    priority: str | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)


def _parse(message: str) -> BaseModel | None:
    try:
        return _EVENTS.validate_json(message)
    except ValidationError:
        return None  # an event this client does not use


def _word_times(segment: SegmentDone, offset_s: float) -> list[tuple[str, float]]:
    """The segment's words, each at its share of the segment's audio by character offset (the
    server times pieces, not words)."""
    span, size = segment.end_s - segment.start_s, max(len(segment.text), 1)
    return [(m.group(), offset_s + segment.start_s + span * m.start() / size)
            for m in re.finditer(r"\S+", segment.text)]


class CsmTTSService(WebsocketTTSService):
    """Pipecat TTS service for csm-serve's text-in WebSocket.

    Example::

        tts = CsmTTSService(base_url="http://localhost:8000", api_key="sk-...",
                            settings=CsmTTSService.Settings(voice="alloy", seed=7))
    """

    Settings = CsmTTSSettings
    _settings: CsmTTSSettings

    def __init__(self, *, base_url: str = "http://localhost:8000", api_key: str | None = None,
                 settings: CsmTTSSettings | None = None, keepalive_s: float | None = 20.0, **kwargs: Any) -> None:
        """Args:
            base_url: The server's API URL (http(s):// or ws(s)://, without the path).
            api_key: Sent as the `bearer.<key>` subprotocol (the server's API keys).
            settings: Voice, seed, sampling, speed, conversation (see CsmTTSSettings).
            keepalive_s: Between turns, an empty `session.update` this often keeps the server's
                idle timeout (60 s by default) from closing the socket; None: off.
            **kwargs: TTSService's (`sample_rate`, `text_aggregation_mode`, ...).
        """
        store = CsmTTSSettings(model=None, voice="alloy", language=None, seed=None, temperature=None,
                               top_k=None, speed=None, speaker=None, conversation=None, max_audio_seconds=None,
                               priority=None)
        if settings is not None:
            store.apply_update(settings)
        kwargs.setdefault("text_aggregation_mode", TextAggregationMode.TOKEN)
        super().__init__(push_text_frames=False, push_start_frame=True, push_stop_frames=True,
                         pause_frame_processing=True, settings=store, **kwargs)
        self._url = re.sub(r"^http", "ws", base_url.rstrip("/")) + PATH
        self._api_key, self._keepalive_s = api_key, keepalive_s
        self._receive_task: Any = None
        self._session_dirty = False
        self._reset_wire()

    def _reset_wire(self) -> None:
        self._context_id: str | None = None  # the context whose text is on the socket
        self._committed = False  # its turn is committed: the next response.done ends it
        self._draining = 0  # cancels not yet confirmed (input_text_buffer.cleared)
        self._samples, self._offset_s = 0, 0.0  # the context's audio so far (samples); where its response began (s)

    def can_generate_metrics(self) -> bool:
        return True

    # ---- connection --------------------------------------------------------------------------
    async def setup(self, setup: FrameProcessorSetup) -> None:
        await super().setup(setup)  # the output sample rate is known from here
        await self._connect()

    async def _connect(self) -> None:
        await super()._connect()
        await self._connect_websocket()
        if self._websocket and (self._receive_task is None or self._receive_task.done()):
            self._receive_task = self.create_task(self._receive_task_handler(self._report_error))
        if self._keepalive_s:
            self._create_keepalive_task(self._keepalive_s)

    async def _disconnect(self) -> None:
        await super()._disconnect()
        await self._cancel_keepalive_task()
        if self._receive_task:
            await self.cancel_task(self._receive_task)
            self._receive_task = None
        await self._disconnect_websocket()

    async def _connect_websocket(self) -> None:
        if self._websocket and self._websocket.state is State.OPEN:
            return
        protocols = [SUBPROTOCOL, *([f"bearer.{self._api_key}"] if self._api_key else [])]
        try:
            self._websocket = await self._websocket_connect(self._url, subprotocols=protocols)
            self._reset_wire()
            await self._send(self._session_update())
            await self._call_event_handler("on_connected")
        except ConnectionClosed as e:  # refused after the handshake: its error event says why
            if not await self._read_refusal():
                await self.push_error(error_msg=f"{self}: {self._url} closed the socket: {e}", exception=e)
            self._websocket = None
            await self._call_event_handler("on_connection_error", f"{e}")
        except (OSError, TimeoutError, WebSocketException) as e:
            self._websocket = None
            await self.push_error(error_msg=f"{self}: cannot connect to {self._url}: {e}", exception=e)
            await self._call_event_handler("on_connection_error", f"{e}")

    async def _read_refusal(self) -> bool:
        """Pass on the error events the server sent before it closed; whether there was one."""
        refused = False
        with contextlib.suppress(ConnectionClosed):  # raised once what came before the close is read
            while True:
                message = await self._websocket.recv()
                if isinstance(message, str) and isinstance(event := _parse(message), ErrorEvent):
                    await self._event(event)
                    refused = True
        return refused

    async def _disconnect_websocket(self) -> None:
        try:
            await self.stop_all_metrics()
            if self._websocket:
                await self._websocket.close()
        finally:
            self._websocket = None
            await self._call_event_handler("on_disconnected")

    async def _send(self, event: BaseModel) -> None:
        if self._websocket is None:
            raise ConnectionError("not connected")
        await self._websocket.send(event.model_dump_json(exclude_unset=True))

    def _session_update(self) -> SessionUpdate:
        """The whole session: the settings, and raw PCM at the pipeline's rate in binary frames."""
        self._session_dirty = False
        named = {k: v for k in _SESSION_FIELDS if (v := getattr(self._settings, k)) is not None}
        return SessionUpdate(type="session.update", session=SessionPatch(
            **named, response_format="pcm", sample_rate=self.sample_rate, audio_transport="binary"))

    def _is_keepalive_ready(self) -> bool:
        return super()._is_keepalive_ready() and self._context_id is None and not self._draining

    async def _send_keepalive(self) -> None:
        await self._send(SessionUpdate(type="session.update"))  # changes nothing; an event resets the idle clock

    async def _update_settings(self, delta: TTSSettings) -> dict[str, Any]:
        changed = await super()._update_settings(delta)
        if changed.keys() & set(_SESSION_FIELDS):
            self._session_dirty = True  # sent before the next turn: the server refuses it mid-response
            if self._context_id is None and self._websocket is not None and self._websocket.state is State.OPEN:
                await self._send(self._session_update())
        return changed

    # ---- text in -----------------------------------------------------------------------------
    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Send the text (a token, or a sentence in SENTENCE mode); audio comes on the receive task."""
        if not self._websocket or self._websocket.state is State.CLOSED:
            await self._connect()
        try:
            if context_id != self._context_id:  # a new turn: a new response on the server
                if self._session_dirty:
                    await self._send(self._session_update())
                self._context_id, self._committed, self._samples, self._offset_s = context_id, False, 0, 0.0
            await self._send(TextAppend(type="input_text_buffer.append", text=text))
        except (ConnectionError, WebSocketException) as e:
            yield ErrorFrame(error=f"{self}: cannot send text: {e}", exception=e)
            yield TTSStoppedFrame(context_id=context_id)
            return
        if not self._is_streaming_tokens:  # in TOKEN mode the base class counts the turn's text
            await self.start_tts_usage_metrics(text)
        yield None

    async def flush_audio(self, context_id: str | None = None) -> None:
        """The turn's text is all in: commit it (the server speaks the rest, then response.done)."""
        if (context_id or self._context_id) != self._context_id or self._context_id is None or not self._websocket:
            return
        self._committed = True
        await self._send(TextCommit(type="input_text_buffer.commit"))

    # ---- interruption ------------------------------------------------------------------------
    async def on_audio_context_interrupted(self, context_id: str) -> None:
        await self.stop_all_metrics()
        if context_id == self._context_id:
            await self._cancel_response()
        await super().on_audio_context_interrupted(context_id)

    async def _handle_interruption(self, frame: InterruptionFrame, direction: FrameDirection) -> None:
        await super()._handle_interruption(frame, direction)  # on_audio_context_interrupted cancels
        if self._context_id is not None and not self.audio_context_available(self._context_id):
            await self._cancel_response()  # its audio context had gone quiet and ended: still speaking there

    async def _cancel_response(self) -> None:
        """Stop the server's response now (its row freed) and drop what it already sent."""
        self._context_id, self._draining = None, self._draining + 1
        try:
            await self._send(ResponseCancel(type="response.cancel"))
            await self._send(TextClear(type="input_text_buffer.clear"))  # its `cleared` ends the drain
        except (ConnectionError, WebSocketException) as e:
            logger.warning(f"{self}: cannot cancel the response: {e}")
            self._draining -= 1

    # ---- audio and events out ------------------------------------------------------------------
    async def _receive_messages(self) -> None:
        async for message in self._websocket:
            if isinstance(message, bytes):
                await self._audio(message)
                continue
            if (event := _parse(message)) is not None:
                await self._event(event)

    async def _audio(self, pcm: bytes) -> None:
        context_id = self._context_id
        if self._draining or context_id is None:
            return  # the cancelled response's tail
        self._samples += len(pcm) // 2
        await self.append_to_audio_context(
            context_id, TTSAudioRawFrame(audio=pcm, sample_rate=self.sample_rate, num_channels=1, context_id=context_id))

    async def _event(self, event: BaseModel) -> None:
        if isinstance(event, ErrorEvent):
            await self.stop_all_metrics()
            await self.push_error(error_msg=f"csm-serve: {event.error.message}",
                                  category=_CATEGORIES.get(event.error.code or ""))
        elif isinstance(event, TextCleared):
            self._draining = max(0, self._draining - 1)
        elif self._draining or (context_id := self._context_id) is None:
            return
        elif isinstance(event, ResponseCreated):
            self._offset_s = self._samples / self.sample_rate  # a turn cut short goes on in a new response
        elif isinstance(event, SegmentDone):
            await self.add_word_timestamps(_word_times(event, self._offset_s), context_id)
        elif isinstance(event, ResponseDone) and (self._committed or event.response.status == "failed"):
            self._context_id = None
            await self.append_to_audio_context(context_id, TTSStoppedFrame(context_id=context_id))
            await self.remove_audio_context(context_id)
