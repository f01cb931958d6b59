"""Text that arrives while a stream speaks (the text-in WebSocket): the pieces after a job's
first ones, handed to the replica one at a time as the stream is ready for the next.

A `TextFeed` is the replica's side (it travels in the SpeechJob; under Ray it pickles to a
handle on the ingress's channel actor, deployments/text_channel.py); a `TextFeedWriter` is
the edge's side. `QueueFeed` is both, over one asyncio queue, for the in-process server.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@runtime_checkable
class TextFeed(Protocol):
    async def next_text(self) -> str | None:
        """The next piece to speak, waiting until the edge has one; None: the text has ended
        (no more pieces will come)."""


class TextFeedWriter(Protocol):
    async def put(self, text: str) -> None:
        """Queue one speakable piece."""

    async def clear(self) -> int:
        """Drop the pieces not yet taken by the stream; returns how many were dropped."""

    async def close(self) -> None:
        """No more pieces: the stream ends after those queued."""

    async def discard(self) -> None:
        """The stream has ended (or was cancelled): let go of the feed."""


@dataclass(frozen=True)
class PieceDone:
    """A piece of a stream has all its audio out (yielded by a replica after that audio when
    the job asks for marks): its index in the stream, its text, and where its audio lies in
    the stream's audio (seconds from the stream's first sample)."""

    index: int
    text: str
    start_s: float
    end_s: float


_END = None


class QueueFeed:
    """A TextFeed and its writer over one asyncio queue (one event loop: the in-process server)."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()

    async def next_text(self) -> str | None:
        return await self._queue.get()

    async def put(self, text: str) -> None:
        self._queue.put_nowait(text)

    async def clear(self) -> int:
        dropped = []
        while not self._queue.empty():
            dropped.append(self._queue.get_nowait())
        if _END in dropped:  # the end stays
            self._queue.put_nowait(_END)
        return sum(piece is not _END for piece in dropped)

    async def close(self) -> None:
        self._queue.put_nowait(_END)

    async def discard(self) -> None:
        self._queue.put_nowait(_END)
