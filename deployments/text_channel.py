"""Text that arrives while a stream speaks, across Ray: the ingress holds the WebSocket, the
replica that speaks is a handle call away, and Serve's handle carries no input stream. So
each ingress process owns one small actor, `TextChannels` (no CPU reserved, on the ingress's
node), holding one queue per open text stream; the ingress writes a stream's pieces to it,
and the replica's `ChannelFeed` (it pickles inside the SpeechJob) takes them, one remote call
per piece. The actor shares its owner's fate: if the ingress dies, the replica's next read
fails and the stream ends, freeing its row.
"""

from __future__ import annotations

import asyncio
import uuid

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


@ray.remote(num_cpus=0, max_restarts=0)
class TextChannels:
    """Queues of text pieces by stream key (None ends a stream's text)."""

    def __init__(self) -> None:
        self._queues: dict[str, asyncio.Queue[str | None]] = {}

    def _queue(self, key: str) -> asyncio.Queue[str | None]:
        return self._queues.setdefault(key, asyncio.Queue())

    async def put(self, key: str, text: str | None) -> None:
        self._queue(key).put_nowait(text)

    async def next_text(self, key: str) -> str | None:
        return await self._queue(key).get()

    async def clear(self, key: str) -> int:
        queue, dropped = self._queue(key), 0
        ended = False
        while not queue.empty():
            piece = queue.get_nowait()
            ended, dropped = ended or piece is None, dropped + (piece is not None)
        if ended:
            queue.put_nowait(None)
        return dropped

    async def discard(self, key: str) -> None:
        queue = self._queues.pop(key, None)
        if queue is not None:  # a reader still waiting (its stream was cancelled) gets the end
            queue.put_nowait(None)

    async def num_open(self) -> int:
        return len(self._queues)


def start_channels() -> ray.actor.ActorHandle:
    """This process's channel actor, on this node when it can be."""
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    return TextChannels.options(scheduling_strategy=here).remote()


class ChannelFeed:
    """One stream's pieces on a TextChannels actor: the replica reads (TextFeed), the ingress
    writes (TextFeedWriter)."""

    def __init__(self, channels: ray.actor.ActorHandle, key: str | None = None) -> None:
        self.channels, self.key = channels, key or uuid.uuid4().hex

    async def next_text(self) -> str | None:
        return await self.channels.next_text.remote(self.key)

    async def put(self, text: str) -> None:
        await self.channels.put.remote(self.key, text)

    async def clear(self) -> int:
        return await self.channels.clear.remote(self.key)

    async def close(self) -> None:
        await self.channels.put.remote(self.key, None)

    async def discard(self) -> None:
        await self.channels.discard.remote(self.key)
