"""POST /v1/audio/speech: audio bytes streamed as generated, or SSE speech.audio.* events.
The request path (serve/speech.py) does the rest; this route only encodes."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

import numpy as np
from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from contract.errors import ReplicaError
from models.params import SAMPLES_PER_FRAME

from ..audio import CONTENT_TYPES, AudioEncoder, make_encoder
from ..deps import RequestIdDep, SettingsDep, SpeechDep
from ..errors import api_error, error_body
from ..schemas import ErrorBody, SpeechAudioDelta, SpeechAudioDone, SpeechError, SpeechRequest, Usage
from ..speech import SpeechStream

router = APIRouter(tags=["speech"])

_AUDIO_RESPONSES = {200: {"content": {**{t: {} for t in CONTENT_TYPES.values()}, "text/event-stream": {}},
                          "description": "audio in the requested response_format, or SSE speech.audio.* events"}}


@router.post("/v1/audio/speech", responses=_AUDIO_RESPONSES, response_class=StreamingResponse)
async def create_speech(body: SpeechRequest, speech: SpeechDep, settings: SettingsDep, request_id: RequestIdDep):
    encoder = make_encoder(body.response_format, body.speed, body.sample_rate)
    try:  # the first chunk decides the status: overload and unusable input are 4xx, not a cut stream
        stream = await speech.start(body, "openai", request_id)
    except ReplicaError as e:
        raise api_error(e.info, request_id, settings.retry_after_s) from None
    if body.stream_format == "sse":
        events = _sse(stream, encoder, len(body.input), request_id, settings.retry_after_s)
        return StreamingResponse(events, media_type="text/event-stream")
    return StreamingResponse(_encoded(stream, encoder), media_type=encoder.content_type)


async def _encoded(stream: SpeechStream, encoder: AudioEncoder) -> AsyncIterator[bytes]:
    """The stream's audio in the response format. A failure mid-stream (the status is sent
    already) cuts the response short, so the client sees an incomplete body, not a silently
    shorter one. Each chunk counts as sent once the server has taken its bytes (the yield
    returns); an encoder that holds a few ms back (mp3, opus, aac frames) is not told apart."""
    async for chunk in stream.audio():
        data = encoder.encode(chunk)
        if data:
            yield data
        stream.sent(len(chunk))
    tail = encoder.flush()
    if tail:
        yield tail


async def _sse(stream: SpeechStream, encoder: AudioEncoder, num_chars: int, request_id: str,
               retry_after_s: int) -> AsyncIterator[bytes]:
    """`speech.audio.delta` events with base64 audio, then `speech.audio.done` with usage:
    input_tokens counts input characters, output_tokens audio frames (80 ms each). A failure
    mid-stream ends it with an `error` event (OpenAI's error object) instead of `done`."""

    def event(payload) -> bytes:
        return f"data: {json.dumps(payload.model_dump())}\n\n".encode()

    try:
        async for data in _encoded(stream, encoder):
            yield event(SpeechAudioDelta(audio=base64.b64encode(data).decode()))
    except ReplicaError as e:  # the status went out already: the stream ends with an error event
        error = api_error(e.info, request_id, retry_after_s)
        body = error_body(error.status, error.message, error.param, error.code)["error"]
        yield event(SpeechError(error=ErrorBody(**body)))
        return
    frames = -(-stream.num_samples // SAMPLES_PER_FRAME)
    yield event(SpeechAudioDone(usage=Usage(input_tokens=num_chars, output_tokens=frames, total_tokens=num_chars + frames)))
