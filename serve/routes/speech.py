"""POST /v1/audio/speech: audio bytes streamed as generated, or SSE speech.audio.* events."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator

import numpy as np
from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from models.params import SAMPLES_PER_FRAME

from .. import metrics as m
from ..audio import CONTENT_TYPES, SAMPLE_RATE, AudioEncoder, make_encoder
from ..backend import BackendError
from ..deps import BackendDep, MetricsDep, RequestIdDep, SettingsDep, StoreDep
from ..errors import APIError, api_error, error_body
from ..schemas import ErrorBody, SpeechAudioDelta, SpeechAudioDone, SpeechError, SpeechRequest, Usage
from ..synthesis import start_speech
from ..voices import OPENAI_VOICES, VoiceNotFound

log = logging.getLogger(__name__)
router = APIRouter(tags=["speech"])

_AUDIO_RESPONSES = {200: {"content": {**{t: {} for t in CONTENT_TYPES.values()}, "text/event-stream": {}},
                          "description": "audio in the requested response_format, or SSE speech.audio.* events"}}


@router.post("/v1/audio/speech", responses=_AUDIO_RESPONSES, response_class=StreamingResponse)
async def create_speech(body: SpeechRequest, backend: BackendDep, store: StoreDep, settings: SettingsDep,
                        metrics: MetricsDep, request_id: RequestIdDep):
    voice_label = body.voice_key if body.voice_key in OPENAI_VOICES else "custom"
    tally = m.RequestTally(metrics, "openai", body.response_format, voice_label)
    metrics.inc(m.INPUT_CHARS, len(body.input))
    try:
        return await _speech(body, backend, store, settings, tally, request_id)
    except APIError as e:
        tally.done(m.outcome_of(e.status))
        raise


async def _speech(body: SpeechRequest, backend, store, settings, tally: m.RequestTally, request_id: str):
    if body.model not in (settings.model_id, *settings.model_aliases):
        raise APIError(404, f"The model '{body.model}' does not exist.", "model", "model_not_found")
    encoder = make_encoder(body.response_format, body.speed)
    try:  # the first chunk decides the status: overload and unusable input are 4xx, not a cut stream
        started = await start_speech(body, backend, store, settings, request_id)
    except VoiceNotFound as e:
        raise APIError(400, str(e), "voice", "voice_not_found") from e
    except BackendError as e:
        raise api_error(e.info, request_id, settings.retry_after_s) from None
    first, pcm = started.first, started.rest
    max_samples = round(body.max_audio_seconds * SAMPLE_RATE) if body.max_audio_seconds else None
    chunks = _capped(first, pcm, max_samples, tally, request_id)
    if body.stream_format == "sse":
        return StreamingResponse(_sse(chunks, encoder, len(body.input), request_id, settings.retry_after_s),
                                 media_type="text/event-stream")
    return StreamingResponse(_encoded(chunks, encoder), media_type=encoder.content_type)


async def _capped(first, pcm: AsyncIterator[np.ndarray], max_samples: int | None, tally: m.RequestTally, request_id: str):
    """The PCM stream, cut at max_samples; closing it (client gone) aborts the generation.
    A failure mid-stream (the status is sent already) is logged and cuts the response short,
    so the client sees an incomplete body, not a silently shorter one."""
    total, chunk, outcome = 0, first, "error"
    if first is not None:
        tally.first_audio()
    try:
        while chunk is not None:
            if max_samples is not None:
                chunk = chunk[: max_samples - total]
            total += len(chunk)
            yield chunk
            if max_samples is not None and total >= max_samples:
                break
            chunk = await anext(pcm, None)
        outcome = "ok"
    except (GeneratorExit, asyncio.CancelledError):
        outcome = "cancelled"
        raise
    except BackendError as e:
        log.error("request %s: stream cut after %d samples: %s (%s)", request_id, total, e.info.message, e.info.kind)
        raise
    finally:
        tally.done(outcome, total)
        await pcm.aclose()


async def _encoded(chunks: AsyncIterator[np.ndarray], encoder: AudioEncoder) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        data = encoder.encode(chunk)
        if data:
            yield data
    tail = encoder.flush()
    if tail:
        yield tail


async def _sse(chunks: AsyncIterator[np.ndarray], encoder: AudioEncoder, num_chars: int, request_id: str,
               retry_after_s: int) -> AsyncIterator[bytes]:
    """`speech.audio.delta` events with base64 audio, then `speech.audio.done` with usage:
    input_tokens counts input characters, output_tokens audio frames (80 ms each). A failure
    mid-stream ends it with an `error` event (OpenAI's error object) instead of `done`."""
    samples = 0

    def event(payload) -> bytes:
        return f"data: {json.dumps(payload.model_dump())}\n\n".encode()

    async def counted():
        nonlocal samples
        async for chunk in chunks:
            samples += len(chunk)
            yield chunk

    try:
        async for data in _encoded(counted(), encoder):
            yield event(SpeechAudioDelta(audio=base64.b64encode(data).decode()))
    except BackendError as e:  # the status went out already: the stream ends with an error event
        error = api_error(e.info, request_id, retry_after_s)
        body = error_body(error.status, error.message, error.param, error.code)["error"]
        yield event(SpeechError(error=ErrorBody(**body)))
        return
    frames = -(-samples // SAMPLES_PER_FRAME)
    yield event(SpeechAudioDone(usage=Usage(input_tokens=num_chars, output_tokens=frames, total_tokens=num_chars + frames)))
