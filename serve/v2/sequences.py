"""Triton's sequences over conversations (serve/v2/protocol.py says how they map): a
sequence's first request (sequence_start) creates the conversation its id names, anew if the
id was in use; a request of a sequence never started is refused as Triton refuses one without
the START flag; the last request (sequence_end) deletes it once its turn is spoken, and every
replica forgets its cached context (the conversations' owner, serve/conversations.py)."""

from __future__ import annotations

from contract.errors import ReplicaError

from ..conversations import ConversationService
from .protocol import SequenceTurn, V2Error


class Sequences:
    def __init__(self, conversations: ConversationService) -> None:
        self.conversations = conversations

    async def begin(self, turn: SequenceTurn) -> None:
        """Create the conversation on the sequence's first request; V2Error(400) for a request
        of a sequence that has not started, or a conversation that cannot be created."""
        try:
            await self.conversations.begin_sequence(turn.conversation, turn.start)
        except ReplicaError as e:
            if e.info.kind == "not_found":
                raise V2Error(400, f"inference request for sequence {turn.sequence_id!r} must specify the START flag "
                              "on the first request of the sequence (parameter sequence_start)") from None
            raise V2Error(400, f"sequence {turn.sequence_id!r}: {e.info.message}") from None

    async def finish(self, turn: SequenceTurn) -> None:
        """After a request: the sequence's end deletes its conversation."""
        if turn.end:
            await self.conversations.discard(turn.conversation)
