"""Turn text + context segments into the backbone's input positions (CSM's chat template).

Each segment is `<bos>[speaker]text<eos>`; a context segment with audio then has one
`<|AUDIO|>` position per Mimi frame and one `<|audio_eos|>` position (an all-zero frame).
The text to speak ends the prompt, with no audio. This is what transformers' CsmProcessor
chat template produces; no torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..params import EOS_FRAME, Segment


@dataclass(frozen=True)
class SpecialIds:
    bos: int
    eos: int
    audio: int
    audio_eos: int


@dataclass(frozen=True)
class PromptTokens:
    """`token_ids[i]` is a text id, or `audio`/`audio_eos` where the position is a frame;
    `frames` holds the codes of those positions, in order."""

    token_ids: tuple[int, ...]
    frames: tuple[tuple[int, ...], ...]

    def __len__(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True, eq=False)
class Prefix:
    """Context segments whose backbone KV is computed once (`Engine.compute_prefix`): a request
    whose context starts with `context` skips those `length` positions, with identical
    results. `kv` is the runner's (opaque here); `num_bytes` is what it holds in memory.
    Immutable, so any thread may hold one; whoever caches it decides how long it lives."""

    context: tuple[Segment, ...]
    length: int
    kv: Any
    num_bytes: int

    def covers(self, context: tuple[Segment, ...]) -> bool:
        """Whether `context` starts with this prefix's segments."""
        n = len(self.context)
        return context[:n] is self.context or tuple(context[:n]) == self.context


@dataclass(frozen=True)
class PromptContext:
    """What a request's text follows: the segments before it (a voice, earlier turns, the
    previous text's audio) and, when they start with a computed prefix's segments, that prefix
    (the request then skips its positions)."""

    segments: tuple[Segment, ...] = ()
    prefix: Prefix | None = None

    @classmethod
    def of(cls, prefix: Prefix | None, *after: Segment) -> PromptContext:
        """A computed prefix's segments (none for None), then `after`, with the prefix."""
        return cls((prefix.context if prefix is not None else ()) + after, prefix)


def encode_segments(tokenizer, ids: SpecialIds, segments: tuple[Segment, ...]) -> PromptTokens:
    token_ids: list[int] = []
    frames: list[tuple[int, ...]] = []
    for seg in segments:
        token_ids.append(ids.bos)
        token_ids.extend(tokenizer.encode(f"[{seg.speaker}]{seg.text}", add_special_tokens=False))
        token_ids.append(ids.eos)
        if seg.codes:
            token_ids.extend([ids.audio] * len(seg.codes))
            token_ids.append(ids.audio_eos)
            frames.extend(seg.codes)
            frames.append(EOS_FRAME)
    return PromptTokens(tuple(token_ids), tuple(frames))


def build_prompt(tokenizer, ids: SpecialIds, text: str, speaker: int, context: tuple[Segment, ...]) -> PromptTokens:
    """The context segments, then the text to speak: its positions extend the context's."""
    return encode_segments(tokenizer, ids, (*context, Segment(speaker=speaker, text=text)))


def segment_positions(tokenizer, segment: Segment) -> int:
    """Backbone positions one segment takes (its text, and its frames with their end)."""
    return len(encode_segments(tokenizer, SpecialIds(0, 0, 0, 0), (segment,)))


def fit_context(tokenizer, fixed: tuple[Segment, ...], turns: tuple[Segment, ...], text: str, speaker: int,
                max_positions: int, room_frames: int, keep: int = 0, refill: float = 1.0) -> tuple[Segment, ...]:
    """The context for speaking `text` after a dialogue: `fixed` (a voice's sample) first, then
    the newest of `turns` (oldest first) that fit in `max_positions` with `room_frames` left for
    the new turn's audio; older turns drop out of the window (a turn is in whole or not at all,
    and a turn never sits without every newer one). Positions are counted as build_prompt
    counts them. Raises ValueError if `fixed` and the text alone leave no room.

    `keep`: the window the last turn used starts at turns[keep]; while the turns from there
    still fit, that start is kept (the cached prefix of that window extends). When they do not,
    the window slides, taking the newest turns that fill at most `refill` of the positions
    left for turns (at least the newest turn, if it fits): with refill below 1 a slide makes
    room for the next turns too, so they extend the new window instead of sliding (and
    recomputing it) every time."""
    used = sum(segment_positions(tokenizer, s) for s in (*fixed, Segment(speaker=speaker, text=text)))
    if used + room_frames > max_positions:
        raise ValueError(f"the text and the voice take {used} positions; with {room_frames} frames of room "
                         f"that is over the model's {max_positions}")
    free = max_positions - used - room_frames  # positions left for turns
    sizes = [segment_positions(tokenizer, turn) for turn in turns]
    if keep and sum(sizes[keep:]) <= free:
        return (*fixed, *turns[keep:])
    budget, taken, window = (free if sum(sizes) <= free else int(refill * free)), 0, 0
    for size in reversed(sizes):
        if taken + size > (budget if window else free):  # the newest turn needs only to fit
            break
        taken, window = taken + size, window + 1
    return (*fixed, *turns[len(turns) - window:])
