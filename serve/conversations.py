"""The edge's one owner of conversations (the store is stores/conversations.py): every edge
(the REST routes, v2's sequences, the request path) creates, reads, extends and deletes them
here, and each failure is a ReplicaError with the store's refusal as its ErrorInfo
(contract.errors.store_error_info). Deleting one is the store, then every replica forgetting
its cached context (they also follow the store on their own)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from contract.backend import SpeechBackend
from contract.errors import ReplicaError, store_error_info
from observability import metrics as m
from stores.conversations import Conversation, ConversationError, ConversationNotFound, ConversationStore

log = logging.getLogger(__name__)
T = TypeVar("T")


class ConversationService:
    def __init__(self, store: ConversationStore, backend: SpeechBackend, metrics: m.MetricsSink) -> None:
        self.store, self.backend, self.metrics = store, backend, metrics

    async def _call(self, fn: Callable[..., T], *args, path_param: str | None = None) -> T:
        """The store's call off the event loop (it may stat a shared volume), its refusals typed."""
        try:
            return await asyncio.to_thread(fn, *args)
        except (ConversationError, ConversationNotFound) as e:
            raise ReplicaError(store_error_info(e, path_param)) from None

    async def create(self, voice_id: str | None = None, conversation_id: str | None = None) -> Conversation:
        """A new conversation (named `conversation_id`, a v2 sequence's, or a random id)."""
        try:
            return await self._call(self.store.create, voice_id, conversation_id)
        finally:
            await self._count()

    async def get(self, conversation_id: str, path_param: str | None = None) -> Conversation:
        return await self._call(self.store.get, conversation_id, path_param=path_param)

    async def add_audio_turn(self, conversation_id: str, speaker: int, transcript: str, pcm: np.ndarray,
                             path_param: str | None = None) -> Conversation:
        """A turn someone else spoke, kept after its turns (the store's bound on its bytes)."""
        return await self._call(self.store.add_audio_turn, conversation_id, speaker, transcript, pcm,
                                path_param=path_param)

    async def delete(self, conversation_id: str, path_param: str | None = None) -> Conversation:
        """Delete it from the store, then have every replica forget its cached context."""
        conversation = await self._call(self.store.delete, conversation_id, path_param=path_param)
        await self._count()
        try:
            await self.backend.forget_conversation(conversation.id)
        except ReplicaError as e:  # the files are gone; the replicas follow the store and forget it anyway
            log.warning("conversation %s deleted, but an engine did not forget it: %s", conversation.id, e.info.message)
        return conversation

    async def discard(self, conversation_id: str) -> None:
        """Delete it if it is there (a v2 sequence's end, or its start when the id was in use)."""
        try:
            await self.delete(conversation_id)
        except ReplicaError:
            return

    async def begin_sequence(self, conversation_id: str, start: bool) -> None:
        """A v2 sequence's request: its first one (start) makes the conversation anew; a later
        one needs it to exist (ReplicaError not_found otherwise)."""
        if start:
            await self.discard(conversation_id)
            await self.create(None, conversation_id)
        else:
            await self.get(conversation_id)

    async def _count(self) -> None:
        if self.store.dir is not None:
            self.metrics.set(m.CONVERSATIONS, await asyncio.to_thread(self.store.count))
