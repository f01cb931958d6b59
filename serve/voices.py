"""The edge's one owner of voices (the store is stores/voices.py): the REST routes and the
request path resolve, create, list and delete them here, each failure a ReplicaError with
the store's refusal as its ErrorInfo (contract.errors.store_error_info). A new voice is
stored, then loaded on the replicas (refused, and removed again, when the model cannot take
it); deleting one is the store, then every replica forgetting it."""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from contract.backend import SpeechBackend
from contract.errors import ErrorInfo, ReplicaError, store_error_info
from stores.voices import Voice, VoiceError, VoiceNotFound, VoiceStore

log = logging.getLogger(__name__)


class VoiceService:
    def __init__(self, store: VoiceStore, backend: SpeechBackend) -> None:
        self.store, self.backend = store, backend

    async def resolve(self, name_or_id: str) -> Voice:
        """The voice a request names (ReplicaError invalid_request `voice` if none)."""
        try:  # the store may stat a shared volume: off the event loop
            return await asyncio.to_thread(self.store.resolve, name_or_id)
        except VoiceNotFound as e:
            raise ReplicaError(store_error_info(e)) from None

    async def list(self) -> list[Voice]:
        return await asyncio.to_thread(self.store.list)

    def check_new(self, name: str, transcript: str) -> None:
        """Refuse a bad name or transcript before its sample is read."""
        try:
            self.store.check_new(name, transcript)
        except VoiceError as e:
            raise ReplicaError(store_error_info(e)) from None

    async def create(self, name: str, pcm: np.ndarray, transcript: str, speaker: int) -> Voice:
        """Store a voice, then make it usable on the replicas now."""
        try:
            voice = await asyncio.to_thread(self.store.create, name, pcm, transcript, speaker)
        except VoiceError as e:
            raise ReplicaError(store_error_info(e)) from None
        try:
            await self.backend.add_voice(voice)
        except ReplicaError as e:  # e.g. the sample and its transcript are longer than the model's context
            await asyncio.to_thread(self.store.delete, voice.id)
            if e.info.kind != "invalid_request":
                raise
            raise ReplicaError(ErrorInfo(
                kind="invalid_request", param="transcript", code="invalid_voice",
                message=f"transcript: the sample and its transcript do not fit the model: {e.info.message}")) from None
        return voice

    async def delete(self, voice_id: str, path_param: str = "voice_id") -> Voice:
        """Delete it from the store, then have every replica forget it."""
        try:
            voice = await asyncio.to_thread(self.store.delete, voice_id)
        except VoiceNotFound as e:
            raise ReplicaError(store_error_info(e, path_param)) from None
        try:
            await self.backend.forget_voice(voice.id)
        except ReplicaError as e:  # the files are gone; the replicas follow the store and forget it anyway
            log.warning("voice %s deleted, but an engine did not forget it: %s", voice.id, e.info.message)
        return voice
