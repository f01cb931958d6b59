"""The one request path both protocol edges take (OpenAI's /v1/audio/speech and the Open
Inference Protocol): a validated SpeechRequest becomes a SpeechJob (voice resolved, text split
at sentences) and goes to the backend; the first audio chunk is awaited here, so overload and
unusable input surface before a response has started. Each edge maps the errors to its own
protocol: VoiceNotFound, and BackendError with its ErrorInfo."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from .backend import BackendError, SpeechBackend, SpeechJob
from .schemas import SpeechRequest
from .settings import ServerSettings
from .text import split_text
from .voices import VoiceStore


@dataclass
class StartedSpeech:
    """The first PCM chunk (None: no audio at all) and the rest of the stream; closing
    `rest` aborts the generation."""

    first: np.ndarray | None
    rest: AsyncIterator[np.ndarray]


async def start_speech(body: SpeechRequest, backend: SpeechBackend, store: VoiceStore, settings: ServerSettings,
                       request_id: str) -> StartedSpeech:
    voice = await asyncio.to_thread(store.resolve, body.voice_key)  # VoiceNotFound; the store may stat a volume
    segments = await asyncio.to_thread(split_text, body.input, settings.segment_max_chars)
    job = SpeechJob(request_id=request_id, segments=tuple(segments), voice=voice,
                    params=body.generation_params(voice.speaker))
    pcm = backend.synthesize(job)
    try:
        first = await anext(pcm, None)
    except BackendError:
        await pcm.aclose()
        raise
    return StartedSpeech(first, pcm)
