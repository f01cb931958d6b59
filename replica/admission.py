"""The capacity policy, in one place.

Rows: a replica serves at most `num_rows` speech streams at once, where `num_rows` is the
engine's `max_num_seqs`: every running stream holds one streaming-Mimi decoder row for its
whole life and, while one of its text segments is generating, one KV slot; since a stream has
at most one segment in the engine at a time, rows = slots and the engine never queues behind
itself. That is the memory bound.

Real time (realtime.py): an `interactive` stream (the default) is admitted only while the
replica predicts every interactive stream, the new one too, keeps at or above real time, and
none of the admitted ones is behind its listener now (`is_behind`, the pipeline's playback
clocks); a lone stream is always admitted. A `batch` stream (no listener waiting) needs only
a row, at most `max_batch_rows` of them, and the engine pauses batch rows between frames
while interactive ones need the step (realtime.RealtimePolicy.batch_rows).

Waiting: a stream that cannot start waits, interactive ones first, each class first come
first served, for at most `wait_s` (or its own `timeout_s`, Triton's `timeout`, if shorter):
then `QueueTimeout` (its own timeout) or `Overloaded`. The line holds `max_waiting` streams
beyond the free rows; beyond that `Overloaded` is raised at once (each protocol answers from
its error table: 429 + Retry-After on the OpenAI API, 503 / UNAVAILABLE on v2).

Under Ray, Serve's router is the row queue (`max_ongoing_requests` = max_num_seqs per
replica, `max_queued_requests` beyond), so replicas run with `max_waiting = 0`: only a stream
that has a free row but no real-time headroom waits here. In-process, this is the queue
(`max_queued_requests`). Event-loop state only: use from one asyncio loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from models.errors import Overloaded
from models.params import Priority

from .realtime import RealtimePolicy


class QueueTimeout(RuntimeError):
    """A stream waited for a row its own timeout long (Triton's `timeout` parameter)."""


@dataclass(eq=False)
class _Waiter:
    priority: Priority
    future: asyncio.Future


class Admission:
    def __init__(self, num_rows: int, max_waiting: int, realtime: RealtimePolicy | None = None,
                 max_batch_rows: int | None = None, wait_s: float | None = None,
                 is_behind: Callable[[], bool] | None = None, recheck_s: float = 0.05) -> None:
        self.num_rows, self.max_waiting = num_rows, max_waiting
        self.realtime = realtime
        self.max_batch_rows = num_rows if max_batch_rows is None else max_batch_rows
        self.wait_s, self.recheck_s = wait_s, recheck_s
        self._is_behind = is_behind or (lambda: False)
        self._free = list(range(num_rows))
        self._held: dict[int, Priority] = {}
        self._waiters: list[_Waiter] = []
        self._recheck: asyncio.TimerHandle | None = None

    @property
    def num_active(self) -> int:
        return len(self._held)

    def num_held(self, priority: Priority) -> int:
        return sum(p == priority for p in self._held.values())

    @property
    def num_waiting(self) -> int:
        return sum(not w.future.done() for w in self._waiters)

    def capacity(self) -> int:
        """Interactive streams this replica keeps real time (rows, when there is no policy)."""
        return self.realtime.capacity() if self.realtime is not None else self.num_rows

    def headroom(self) -> int:
        """Interactive streams that could still start now without waiting."""
        waiting = sum(w.priority == "interactive" and not w.future.done() for w in self._waiters)
        return max(0, min(len(self._free), self.capacity() - self.num_held("interactive")) - waiting)

    @contextlib.asynccontextmanager
    async def row(self, priority: Priority = "interactive", timeout_s: float | None = None) -> AsyncIterator[int]:
        """Hold a decoder row (and so the right to a KV slot) for one stream (see above)."""
        row = await self._acquire(priority, timeout_s)
        try:
            yield row
        finally:
            self._release(row)

    def _admissible(self, priority: Priority) -> bool:
        if not self._free:
            return False
        if priority == "batch":
            return self.num_held("batch") < self.max_batch_rows
        interactive = self.num_held("interactive")
        if interactive == 0:
            return True  # a lone stream is always served
        within = self.realtime.admits(interactive) if self.realtime is not None else interactive < self.num_rows
        return within and not self._is_behind()

    def _take(self, priority: Priority) -> int:
        row = heapq.heappop(self._free)
        self._held[row] = priority
        return row

    async def _acquire(self, priority: Priority, timeout_s: float | None) -> int:
        if not any(w.priority == priority and not w.future.done() for w in self._waiters) and self._admissible(priority):
            return self._take(priority)
        if self.num_waiting >= self.max_waiting + len(self._free):
            raise Overloaded(f"all {self.num_rows} streams are busy or at the real-time bound, "
                             f"and {self.num_waiting} are waiting")
        waiter = _Waiter(priority, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        self._arm_recheck()
        limit = min(timeout_s if timeout_s is not None else math.inf, self.wait_s if self.wait_s is not None else math.inf)
        try:
            done, _ = await asyncio.wait({waiter.future}, timeout=None if limit == math.inf else limit)
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise
        if not done:
            self._abandon(waiter)
            if timeout_s is not None and timeout_s <= limit:
                raise QueueTimeout("Request timeout expired")
            raise Overloaded(f"no stream could start within {limit:g} s")
        self._waiters.remove(waiter)
        return waiter.future.result()

    def _abandon(self, waiter: _Waiter) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)
        if waiter.future.done() and not waiter.future.cancelled():  # handed a row just as it left
            self._release(waiter.future.result())
        else:
            waiter.future.cancel()

    def _release(self, row: int) -> None:
        del self._held[row]
        heapq.heappush(self._free, row)
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand free rows to waiters that may start now: interactive ones first, each class
        in arrival order (a waiter that may not start holds back the later ones of its class)."""
        for priority in ("interactive", "batch"):
            for waiter in [w for w in self._waiters if w.priority == priority and not w.future.done()]:
                if not self._admissible(priority):
                    break
                waiter.future.set_result(self._take(priority))

    def _arm_recheck(self) -> None:
        """While streams wait, look again every `recheck_s`: the real-time bound moves with
        the learned step times and the streams' clocks, not only when a row is released."""
        if self._recheck is None and self._waiters:
            self._recheck = asyncio.get_running_loop().call_later(self.recheck_s, self._on_recheck)

    def _on_recheck(self) -> None:
        self._recheck = None
        self._dispatch()
        self._arm_recheck()
