"""The capacity policy, in one place.

A replica serves at most `num_rows` speech streams at once, where `num_rows` is the engine's
`max_num_seqs`: every running stream holds one streaming-Mimi decoder row for its whole life
and, while one of its text segments is generating, one KV slot; since a stream has at most
one segment in the engine at a time, rows = slots and the engine never queues behind
itself. Up to `max_waiting` more streams wait for a row, first come first served; beyond
that `Overloaded` is raised at once (each protocol answers it from its error table: 429 +
Retry-After on the OpenAI API, 503 + Retry-After / UNAVAILABLE on v2).

Under Ray, Serve's router is the queue (`max_ongoing_requests` = max_num_seqs per replica,
`max_queued_requests` beyond), so replicas run with `max_waiting = 0`; in-process, this is
the queue (`max_queued_requests`). Event-loop state only: use from one asyncio loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections import deque
from collections.abc import AsyncIterator

from models.errors import Overloaded


class Admission:
    def __init__(self, num_rows: int, max_waiting: int) -> None:
        self.num_rows, self.max_waiting = num_rows, max_waiting
        self._free = list(range(num_rows))
        self._waiters: deque[asyncio.Future] = deque()

    @property
    def num_active(self) -> int:
        return self.num_rows - len(self._free)

    @property
    def num_waiting(self) -> int:
        return sum(not f.done() for f in self._waiters)

    @contextlib.asynccontextmanager
    async def row(self) -> AsyncIterator[int]:
        """Hold a decoder row (and so the right to a KV slot) for one stream; waits in FIFO
        order while all are busy, raises Overloaded when the wait line is full too."""
        row = await self._acquire()
        try:
            yield row
        finally:
            self._release(row)

    async def _acquire(self) -> int:
        if self._free and not self._waiters:
            return heapq.heappop(self._free)
        if self.num_waiting >= self.max_waiting:
            raise Overloaded(f"all {self.num_rows} streams are busy and {self.max_waiting} are waiting")
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # handed a row just as the caller left
                self._release(future.result())
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(future)

    def _release(self, row: int) -> None:
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(row)
                return
        heapq.heappush(self._free, row)
