"""Voice glue: the voice store (one folder per voice, shared by every replica) owns the voices;
each engine keeps the ones it has used encoded with Mimi and their prompt prefix cached, and
follows the store: a voice deleted or changed there is forgotten here."""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from models.frontend.speech import SpeechPipeline
from models.params import Segment
from serve.voices import Voice, VoiceStore

log = logging.getLogger(__name__)
SYNC_INTERVAL_S = 1.0


class EngineVoices:
    """The voices one engine has loaded, each with the record it was loaded from: a request
    uses a cached prefix only when the store's record is the same (a voice folder replaced
    under the same id is loaded again), and `sync` forgets what the store no longer has, so
    a delete through any ingress reaches every replica. Event-loop state: one asyncio loop."""

    def __init__(self, pipeline: SpeechPipeline, store: VoiceStore) -> None:
        self.pipeline, self.store = pipeline, store
        self._loaded: dict[str, Voice] = {}

    @property
    def loaded(self) -> list[str]:
        """Ids of the voices whose context this engine holds now."""
        return [vid for vid in self._loaded if vid in self.pipeline.voices]

    async def context(self, voice: Voice) -> tuple[Segment, ...]:
        """The voice's context here, loading it from the store first if this engine has not
        seen this version of it (created through another replica, placed in the folder since,
        or evicted by the registry's LRU bound)."""
        if self._loaded.get(voice.id) == voice and voice.id in self.pipeline.voices:
            return self.pipeline.voices.get(voice.id)  # no await between the check and the read
        return await self.load(voice)

    async def load(self, voice: Voice) -> tuple[Segment, ...]:
        """Encode the stored voice's clips (read on a worker thread) and cache its prefix."""
        clips = await asyncio.to_thread(lambda: [(self.store.load_clip(voice, c), c.transcript) for c in voice.clips])
        return await self.add(voice, clips)

    async def add(self, voice: Voice, clips: list[tuple[np.ndarray, str]]) -> tuple[Segment, ...]:
        """Cache a voice from decoded clips; RequestError when its prompt does not fit the model."""
        context = await self.pipeline.voices.add(voice.id, voice.speaker, clips)
        self._loaded[voice.id] = voice
        return context

    async def forget(self, voice_id: str) -> None:
        self._loaded.pop(voice_id, None)
        await self.pipeline.voices.remove(voice_id)

    async def sync(self) -> list[str]:
        """Forget every loaded voice the store no longer has as it was loaded; returns their ids.
        The store answers from its index (one stat unless the folder changed)."""
        current = {v.id: v for v in await asyncio.to_thread(self.store.list)}
        for vid in [vid for vid in self._loaded if vid not in self.pipeline.voices]:
            del self._loaded[vid]  # the registry's LRU bound evicted it: nothing left to forget
        stale = [vid for vid, voice in self._loaded.items() if current.get(vid) != voice]
        for vid in stale:
            await self.forget(vid)
        return stale

    async def follow_store(self, interval_s: float = SYNC_INTERVAL_S) -> None:
        """Run `sync` forever (a replica's background task); errors are logged, never fatal."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                if forgotten := await self.sync():
                    log.info("forgot voices gone from the store: %s", ", ".join(forgotten))
            except Exception:
                log.exception("voice sync failed")

    async def load_all(self) -> int:
        """Load every voice of the store; returns how many have reference clips. A voice whose
        files are unusable is logged and skipped, not fatal to the replica."""
        loaded = 0
        for voice in await asyncio.to_thread(self.store.list):
            try:
                await self.load(voice)
            except (OSError, ValueError) as e:
                log.error("voice %s (%s) not loaded: %s", voice.id, voice.name, e)
                continue
            loaded += bool(voice.clips)
        return loaded
