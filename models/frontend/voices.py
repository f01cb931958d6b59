"""Voice id -> its context segments (Mimi codes of its reference clips + transcripts), with
the backbone KV of that prompt cached in the engine. Event-loop state only; Mimi encoding
runs on a worker thread and the prefix is computed on the engine's own thread.

Bounded: at most `max_voices` are kept, the least recently used is forgotten (its prefix
freed) when another is added, and loads again from the voice store on its next use. So
uploads cannot grow a replica's memory without limit, and a voice deleted through another
replica (ids are never reused, so no request can name it again) leaves this one in time."""

from __future__ import annotations

import asyncio
from collections import OrderedDict

import numpy as np

from ..codec.encode import encode_clip
from ..params import Segment
from .async_engine import AsyncEngine


DEFAULT_MAX_VOICES = 64


class VoiceRegistry:
    def __init__(self, engine: AsyncEngine, codec, max_voices: int = DEFAULT_MAX_VOICES) -> None:
        self._engine, self._codec, self.max_voices = engine, codec, max_voices
        self._voices: OrderedDict[str, tuple[Segment, ...]] = OrderedDict()  # least recently used first

    def __len__(self) -> int:
        return len(self._voices)

    def __contains__(self, voice_id: str) -> bool:
        return voice_id in self._voices

    def get(self, voice_id: str) -> tuple[Segment, ...]:
        """A loaded voice's context (empty for a speaker-id-only voice). Raises KeyError."""
        self._voices.move_to_end(voice_id)
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
        self._voices.move_to_end(voice_id)
        while len(self._voices) > self.max_voices:
            await self.remove(next(iter(self._voices)))
        return tuple(context)

    async def remove(self, voice_id: str) -> None:
        """Forget a voice and its cached prompt prefix (unknown ids are ignored)."""
        context = self._voices.pop(voice_id, ())
        if context:
            await self._engine.remove_prefix(context)
