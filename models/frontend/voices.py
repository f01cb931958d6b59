"""Voice id -> its context segments (Mimi codes of its reference clips + transcripts), with
the backbone KV of that prompt cached in the engine. Event-loop state only; Mimi encoding
runs on a worker thread and the prefix is computed on the engine's own thread."""

from __future__ import annotations

import asyncio

import numpy as np

from ..codec.encode import encode_clip
from ..params import Segment
from .async_engine import AsyncEngine


class VoiceRegistry:
    def __init__(self, engine: AsyncEngine, codec) -> None:
        self._engine, self._codec = engine, codec
        self._voices: dict[str, tuple[Segment, ...]] = {}

    def __contains__(self, voice_id: str) -> bool:
        return voice_id in self._voices

    def get(self, voice_id: str) -> tuple[Segment, ...]:
        """A loaded voice's context (empty for a speaker-id-only voice). Raises KeyError."""
        return self._voices[voice_id]

    async def add(self, voice_id: str, speaker: int, clips: list[tuple[np.ndarray, str]]) -> tuple[Segment, ...]:
        """Encode a voice's reference clips with Mimi once, and cache the backbone KV of its
        prompt in the engine, so its requests start without re-prefilling it. Raises
        RequestError when the prompt does not fit the model (the voice is then not kept)."""
        context = []
        for pcm, transcript in clips:
            codes = await asyncio.to_thread(encode_clip, self._codec, pcm)
            context.append(Segment(speaker=speaker, text=transcript, codes=codes))
        if context:
            await self._engine.add_prefix(tuple(context))
        self._voices[voice_id] = tuple(context)
        return self._voices[voice_id]

    async def remove(self, voice_id: str) -> None:
        """Forget a voice and its cached prompt prefix (unknown ids are ignored)."""
        context = self._voices.pop(voice_id, ())
        if context:
            await self._engine.remove_prefix(context)
