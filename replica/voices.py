"""Voices on a replica: a voice's context (its reference clips encoded with Mimi, with their
transcripts) and that context's prefix KV, kept in the replica's context cache under the
voice's id and store version. The voice store (shared by every replica) owns the voices;
this follows it: a voice deleted or changed there is forgotten here within a second, with no
request needed (`sync`, which the replica runs every second), and a changed record is never served from the cache.

Event-loop state: one asyncio loop. Clips are read and Mimi-encoded on worker threads, the
prefix is computed on the engine's thread (between steps).
"""

from __future__ import annotations

import asyncio
import logging

from models.codec.encode import encode_clip
from models.core.prompt import Prefix
from models.frontend.engine_loop import EngineLoop
from models.params import Segment
from stores.voices import Voice, VoiceStore

from .context_cache import ContextCache, ContextKey

log = logging.getLogger(__name__)
SYNC_INTERVAL_S = 1.0


class VoiceContexts:
    def __init__(self, store: VoiceStore, cache: ContextCache, loop: EngineLoop, codec) -> None:
        self.store, self.cache, self._loop, self._codec = store, cache, loop, codec
        self._loading: dict[ContextKey, asyncio.Task] = {}  # one computation per key at a time

    @property
    def loaded(self) -> list[str]:
        """Ids of the voices whose prefix this replica holds now."""
        return [key.id for key in self.cache.keys("voice")]

    async def prefix(self, voice: Voice) -> Prefix | None:
        """The voice's prefix (None for a voice without clips: a speaker id only), computed
        and cached first if this replica does not hold this version of it. Raises
        RequestError when its prompt does not fit the model."""
        if not voice.clips:
            return None
        key = ContextKey("voice", voice.id, voice.version)
        if (prefix := self.cache.get(key)) is not None:
            self.cache.count("voice", prefix.length, 0)
            return prefix
        prefix = await self._load(key, voice)
        self.cache.count("voice", 0, prefix.length)
        return prefix

    async def _load(self, key: ContextKey, voice: Voice) -> Prefix:
        """Compute and cache a voice's prefix in a task of its own, shared by every request
        that needs it meanwhile: a request that goes away does not cancel it for the others."""
        task = self._loading.get(key)
        if task is None:
            task = self._loading[key] = asyncio.ensure_future(self._compute_and_cache(key, voice))
            task.add_done_callback(lambda t: (self._loading.pop(key, None), t.cancelled() or t.exception()))
        return await asyncio.shield(task)

    async def _compute_and_cache(self, key: ContextKey, voice: Voice) -> Prefix:
        prefix = await self._compute(voice)
        self.cache.put(key, prefix)
        return prefix

    async def _compute(self, voice: Voice) -> Prefix:
        context = []
        for clip in voice.clips:
            pcm = await asyncio.to_thread(self.store.load_clip, voice, clip)
            codes = await asyncio.to_thread(encode_clip, self._codec, pcm)
            context.append(Segment(speaker=voice.speaker, text=clip.transcript, codes=codes))
        return await self._loop.compute_prefix(tuple(context))

    def forget(self, voice_id: str) -> None:
        """Drop a voice's prefix here (unknown ids are ignored)."""
        self.cache.forget("voice", voice_id)

    async def sync(self) -> list[str]:
        """Forget every cached voice the store no longer has as it was loaded; returns their
        ids. The store answers from its index (one stat unless the folder changed)."""
        current = {v.id: v.version for v in await asyncio.to_thread(self.store.list)}
        stale = [key.id for key in self.cache.keys("voice") if current.get(key.id) != key.version]
        for voice_id in stale:
            self.forget(voice_id)
        return stale

    async def load_all(self) -> int:
        """Compute the prefix of every stored voice with clips (as far as the cache holds
        them); returns how many. A voice whose files are unusable is logged and skipped."""
        loaded = 0
        for voice in await asyncio.to_thread(self.store.list):
            try:
                loaded += await self.prefix(voice) is not None
            except (OSError, ValueError) as e:
                log.error("voice %s (%s) not loaded: %s", voice.id, voice.name, e)
        return loaded
