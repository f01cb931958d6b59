"""Voice glue: stored voices are encoded with Mimi once per engine and their prompt prefix cached."""

from __future__ import annotations

import logging

from models.frontend.speech import SpeechPipeline
from models.params import Segment
from serve.voices import Voice, VoiceStore

log = logging.getLogger(__name__)


async def load_voice(pipeline: SpeechPipeline, store: VoiceStore, voice: Voice) -> None:
    """Encode one voice's clips and cache its prefix (a voice with no clip is a speaker id)."""
    clips = [(store.load_clip(voice, clip), clip.transcript) for clip in voice.clips]
    await pipeline.voices.add(voice.id, voice.speaker, clips)


async def voice_context(pipeline: SpeechPipeline, store: VoiceStore, voice: Voice) -> tuple[Segment, ...]:
    """The voice's context in this engine, loading it from the store first if this engine has
    not seen it (created through another replica, or placed in the voices folder since)."""
    if voice.id not in pipeline.voices:
        await load_voice(pipeline, store, voice)
    return pipeline.voices.get(voice.id)


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
