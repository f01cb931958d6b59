"""Triton's sequences over conversations (serve/v2/protocol.py says how they map): a
sequence's first request (sequence_start) creates the conversation its id names, anew if the
id was in use; a request of a sequence never started is refused as Triton refuses one without
the START flag; the last request (sequence_end) deletes it once its turn is spoken, and every
replica forgets its cached context."""

from __future__ import annotations

import asyncio
import logging

from stores.conversations import ConversationError, ConversationNotFound, ConversationStore
from contract.errors import ReplicaError

from contract.backend import SpeechBackend
from .protocol import SequenceTurn, V2Error

log = logging.getLogger(__name__)


class Sequences:
    def __init__(self, conversations: ConversationStore, backend: SpeechBackend) -> None:
        self.conversations, self.backend = conversations, backend

    async def begin(self, turn: SequenceTurn) -> None:
        """Create the conversation on the sequence's first request; V2Error(400) for a request
        of a sequence that has not started, or a conversation that cannot be created."""
        try:
            if turn.start:
                await self._delete(turn.conversation)
                await asyncio.to_thread(self.conversations.create, None, turn.conversation)
            else:
                await asyncio.to_thread(self.conversations.get, turn.conversation)
        except ConversationNotFound:
            raise V2Error(400, f"inference request for sequence {turn.sequence_id!r} must specify the START flag on "
                          "the first request of the sequence (parameter sequence_start)") from None
        except ConversationError as e:
            raise V2Error(400, f"sequence {turn.sequence_id!r}: {e.message}") from None

    async def finish(self, turn: SequenceTurn) -> None:
        """After a request: the sequence's end deletes its conversation."""
        if turn.end:
            await self._delete(turn.conversation)

    async def _delete(self, conversation_id: str) -> None:
        try:
            await asyncio.to_thread(self.conversations.delete, conversation_id)
        except (ConversationNotFound, ConversationError):
            return
        try:
            await self.backend.forget_conversation(conversation_id)
        except ReplicaError as e:  # the replicas follow the store and forget it anyway
            log.warning("sequence's conversation %s deleted, but an engine did not forget it: %s", conversation_id,
                        e.info.message)
