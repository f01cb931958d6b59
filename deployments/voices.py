"""Voice glue: stored voices are encoded with Mimi once per engine and their prompt prefix cached."""

from __future__ import annotations

import asyncio
import logging

from models.frontend.speech import SpeechPipeline
from models.params import Segment
from serve.voices import Voice, VoiceStore

log = logging.getLogger(__name__)


async def load_voice(pipeline: SpeechPipeline, store: VoiceStore, voice: Voice) -> tuple[Segment, ...]:
    """Encode one voice's clips and cache its prefix (a voice with no clip is a speaker id).
    The clips are read on a worker thread (no file I/O on the event loop)."""
    clips = await asyncio.to_thread(lambda: [(store.load_clip(voice, clip), clip.transcript) for clip in voice.clips])
    return await pipeline.voices.add(voice.id, voice.speaker, clips)


async def voice_context(pipeline: SpeechPipeline, store: VoiceStore, voice: Voice) -> tuple[Segment, ...]:
    """The voice's context in this engine, loading it from the store first if this engine has
    not seen it (created through another replica, or placed in the voices folder since)."""
    if voice.id in pipeline.voices:  # no await between the check and the read: no eviction between
        return pipeline.voices.get(voice.id)
    return await load_voice(pipeline, store, voice)


async def load_voices(pipeline: SpeechPipeline, store: VoiceStore) -> int:
    """Load every voice of the store into the pipeline; returns how many have reference clips.
    A voice whose files are unusable is logged and skipped, not fatal to the replica."""
    loaded = 0
    for voice in store.list():
        try:
            await load_voice(pipeline, store, voice)
        except (OSError, ValueError) as e:
            log.error("voice %s (%s) not loaded: %s", voice.id, voice.name, e)
            continue
        loaded += bool(voice.clips)
    return loaded
