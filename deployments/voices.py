"""Startup glue: every stored voice is encoded with Mimi once and its prompt prefix cached."""

from __future__ import annotations

import logging

from models.frontend.speech import SpeechPipeline
from serve.voices import Voice, VoiceStore

log = logging.getLogger(__name__)


async def load_voice(pipeline: SpeechPipeline, store: VoiceStore, voice: Voice) -> None:
    """Encode one voice's clips and cache its prefix (a voice with no clip is a speaker id)."""
    clips = [(store.load_clip(voice, clip), clip.transcript) for clip in voice.clips]
    await pipeline.voices.add(voice.id, voice.speaker, clips)


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
