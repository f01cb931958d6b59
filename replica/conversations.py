"""Conversations on a replica: the context a conversation's next turn is spoken in, its prefix
KV kept hot in the replica's context cache, and the turn kept when it is spoken.

A turn's context is the voice's sample (if any) then the newest turns that fit the model with
room for the reply (`fit_context`); older turns stay stored but drop out of the window. A
window keeps its start while its turns fit; when they no longer do it slides to fill half the
positions (`conversation_refill`), so the turns after a slide extend the new window instead of
each recomputing one. The
conversation's cached prefix is the KV of exactly such a context. After a turn completes, the
prefix of its context plus the turn just spoken is computed in the background (only the new
turn's positions are prefilled, from the prefix it was spoken with), so the next turn finds
its whole context computed and prefills only its own text. A context that starts with the
cached one (a turn someone else spoke was added since) extends it; one that does not (the
window slid past a turn, or another replica spoke the last turn) is computed from the voice's
prefix. Every path gives the same KV as computing the context from scratch.

The store (shared by every replica) owns the conversations: one deleted or expired there is
forgotten here within a second (`sync`). Turns on one conversation are ordered by the
store's turn lock, held for the whole stream. Event-loop state: one asyncio loop; files are
read and Mimi-encoded on worker threads, prefixes computed on the engine's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import numpy as np

from contract.job import SpeechJob
from models.codec.encode import encode_clip
from models.core.prompt import Prefix, fit_context
from models.errors import RequestError
from models.frontend.engine_loop import EngineLoop
from models.params import Segment
from stores.conversations import Conversation, ConversationNotFound, ConversationStore, Turn

from .context_cache import ContextCache, ContextKey

log = logging.getLogger(__name__)
MAX_SEGMENTS = 128  # turns kept read (and Mimi-encoded) in memory, across conversations


@dataclass
class TurnPlan:
    """A turn being spoken: its conversation as it stood, the prefix of the context it is
    spoken in (None: no voice sample, no earlier turn), and what it has spoken so far."""

    conversation: Conversation
    prefix: Prefix | None
    spoken: list[Segment] = field(default_factory=list)

    def segment_done(self, index: int, segment: Segment) -> None:
        self.spoken.append(segment)


class ConversationContexts:
    def __init__(self, store: ConversationStore, cache: ContextCache, loop: EngineLoop, codec, tokenizer,
                 max_positions: int, room_frames: Callable[[SpeechJob], int], refill: float = 0.5) -> None:
        """`room_frames(job)`: backbone positions a turn's reply may need (its frames and the
        text pieces it is spoken in), kept free when the window is chosen. `refill`: the share
        of the positions for turns a window fills when it slides (fit_context)."""
        self.store, self.cache, self._loop, self._codec = store, cache, loop, codec
        self._tokenizer, self._max_positions, self._room_frames = tokenizer, max_positions, room_frames
        self._segments: OrderedDict[tuple[str, str], Segment] = OrderedDict()  # (conversation, turn file), LRU first
        self._warming: dict[str, asyncio.Task] = {}  # conversation id -> its next prefix being computed
        self._starts: dict[str, int] = {}  # conversation id -> the index of its window's first turn
        self._refill = refill

    @contextlib.asynccontextmanager
    async def turn(self, job: SpeechJob, voice: Prefix | None) -> AsyncIterator[TurnPlan]:
        """Hold the conversation's turn lock (TurnInProgress if another turn holds it) and plan
        the turn: the window of its context after `voice` (the voice's prefix) and its prefix.
        ConversationNotFound / RequestError when it cannot be spoken."""
        lock = self.store.turn(job.conversation)
        conversation = await asyncio.to_thread(lock.__enter__)
        try:
            yield TurnPlan(conversation, await self._prefix(job, conversation, voice))
        finally:
            await asyncio.to_thread(lock.__exit__, None, None, None)

    async def complete(self, job: SpeechJob, plan: TurnPlan) -> None:
        """Keep the spoken turn in the conversation, then compute the next turn's prefix in the
        background (the next turn on this conversation waits for it)."""
        spoken = [s for s in plan.spoken if s.codes]
        if not spoken:
            return
        turn = Segment(speaker=job.params.speaker, text=" ".join(s.text for s in spoken),
                       codes=tuple(frame for s in spoken for frame in s.codes))
        codes = np.asarray(turn.codes, dtype=np.int16)
        updated = await asyncio.to_thread(self.store.add_generated_turn, plan.conversation.id, turn.speaker,
                                          turn.text, codes)
        self._remember(updated.id, updated.turns[-1], turn)
        context = (*(plan.prefix.context if plan.prefix else ()), turn)
        task = asyncio.ensure_future(self._warm(_key(updated), context, plan.prefix))
        self._warming[updated.id] = task
        task.add_done_callback(lambda t: (self._warming.pop(updated.id, None) if self._warming.get(updated.id) is t
                                          else None, t.cancelled() or t.exception()))

    async def warmed(self, conversation_id: str) -> None:
        """Wait until the conversation's next prefix, if one is being computed, is cached."""
        if (task := self._warming.get(conversation_id)) is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(task)

    async def _warm(self, key: ContextKey, context: tuple[Segment, ...], base: Prefix | None) -> None:
        try:
            prefix = await self._loop.compute_prefix(context, base)
        except RequestError:  # over the model's positions: the next turn's window slides instead
            return
        self.cache.put(key, prefix)

    async def _prefix(self, job: SpeechJob, conversation: Conversation, voice: Prefix | None) -> Prefix | None:
        await self.warmed(conversation.id)
        fixed = voice.context if voice is not None else ()
        context = await self._context(job, conversation, fixed)
        if not context:
            return None
        key = _key(conversation)
        cached = self.cache.get(key, covering=context)
        if cached is not None and len(cached.context) == len(context):
            self.cache.count("conversation", cached.length, 0)
            return cached
        base = cached or voice
        prefix = await self._loop.compute_prefix(context, base)  # only the positions after the base
        reused = base.length if base is not None else 0
        self.cache.count("conversation", reused, prefix.length - reused)
        self.cache.put(key, prefix)
        return prefix

    async def _context(self, job: SpeechJob, conversation: Conversation, fixed: tuple[Segment, ...]) -> tuple[Segment, ...]:
        """`fixed` and the newest turns that fit with room for the reply (read newest first,
        only as far back as could fit), keeping the start of the last window while it fits."""
        newest: list[Segment] = []
        positions = 0
        for turn in reversed(conversation.turns):
            if positions > self._max_positions:
                break
            segment = await self._segment(conversation.id, turn)
            newest.append(segment)
            positions += len(segment.codes) + 3  # a lower bound on what it takes
        skipped = len(conversation.turns) - len(newest)  # too old to fit: not read
        keep = max(0, self._starts.get(conversation.id, 0) - skipped)
        try:
            context = await asyncio.to_thread(fit_context, self._tokenizer, fixed, tuple(reversed(newest)),
                                              " ".join(job.texts), job.params.speaker, self._max_positions,
                                              self._room_frames(job), keep, self._refill)
        except ValueError as e:
            raise RequestError("input", f"this turn does not fit the model's context: {e}",
                               "context_length_exceeded") from None
        self._starts[conversation.id] = len(conversation.turns) - (len(context) - len(fixed))
        return context

    async def _segment(self, conversation_id: str, turn: Turn) -> Segment:
        """A stored turn as a context segment (a clip is Mimi-encoded once, then remembered)."""
        slot = (conversation_id, turn.audio or turn.codes or "")
        if (segment := self._segments.get(slot)) is not None:
            self._segments.move_to_end(slot)
            return segment
        if turn.audio is not None:
            pcm = await asyncio.to_thread(self.store.load_audio, conversation_id, turn)
            codes = await asyncio.to_thread(encode_clip, self._codec, pcm)
        else:
            codes = tuple(map(tuple, (await asyncio.to_thread(self.store.load_codes, conversation_id, turn)).tolist()))
        segment = Segment(speaker=turn.speaker, text=turn.text, codes=codes)
        self._remember(conversation_id, turn, segment)
        return segment

    def _remember(self, conversation_id: str, turn: Turn, segment: Segment) -> None:
        self._segments[conversation_id, turn.audio or turn.codes or ""] = segment
        while len(self._segments) > MAX_SEGMENTS:
            self._segments.popitem(last=False)

    def forget(self, conversation_id: str) -> None:
        """Drop a conversation's prefix and read turns here (unknown ids are ignored)."""
        self.cache.forget("conversation", conversation_id)
        self._starts.pop(conversation_id, None)
        for slot in [s for s in self._segments if s[0] == conversation_id]:
            del self._segments[slot]

    async def sync(self) -> list[str]:
        """Forget every conversation held here that the store no longer has (deleted,
        expired); returns their ids."""
        held = ({key.id for key in self.cache.keys("conversation")} | {slot[0] for slot in self._segments}
                | set(self._starts))
        gone = []
        for conversation_id in held:
            try:
                await asyncio.to_thread(self.store.get, conversation_id)
            except ConversationNotFound:
                gone.append(conversation_id)
                self.forget(conversation_id)
        return gone


def _key(conversation: Conversation) -> ContextKey:
    return ContextKey("conversation", conversation.id, str(conversation.created_at))
