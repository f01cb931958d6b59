"""The capacity policy, in one place: every stream gets one decision when it arrives.

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

Deciding at arrival: an interactive stream that cannot start now is refused at once
(`Overloaded`, with `retry_after_s`: when the running streams' remaining audio says headroom
comes back), unless headroom is expected within `wait_s` (a short wait, well under a second:
a stream about to end, or the next row of a growing batch): then it waits that long at most.
It never waits behind a stream that will play for seconds. A `batch` stream may wait its own,
longer bound (`batch_wait_s`). A stream's own `timeout_s` (Triton's `timeout`) bounds any wait:
then `QueueTimeout`. Waiters are served interactive first, each class first come first served;
the line holds `max_waiting` streams beyond the free rows, beyond that a stream is refused at
once. Each protocol answers `Overloaded` from its error table: 429 + Retry-After on the OpenAI
API, 503 / UNAVAILABLE on v2.

This is the one queue: in-process and under Ray alike (there, Serve's `max_ongoing_requests`
leaves room for this line, so Serve's own queue holds nothing while a replica runs; the ingress
refuses an interactive stream itself when no replica has headroom, deployments/headroom.py, and
the router sends each stream to the replica with the most, deployments/router.py). Event-loop state only: use
from one asyncio loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from contract.errors import QueueTimeout
from models.errors import Overloaded
from models.params import Priority

from .realtime import FRAME_S, RealtimePolicy

SOON_S = 0.1  # how soon a row of a growing batch, or a listener catching up, is expected


@dataclass(eq=False)
class Ticket:
    """One admitted stream's row; its stream keeps `frames_left` (an upper bound on the frames
    it may still generate; inf: unknown, e.g. text still coming) up to date."""

    row: int
    priority: Priority
    frames_left: float = math.inf


@dataclass(eq=False)
class _Waiter:
    priority: Priority
    future: asyncio.Future


class Admission:
    def __init__(self, num_rows: int, max_waiting: int, realtime: RealtimePolicy | None = None,
                 max_batch_rows: int | None = None, wait_s: float = 0.25, batch_wait_s: float | None = None,
                 is_behind: Callable[[], bool] | None = None, recheck_s: float = 0.05) -> None:
        self.num_rows, self.max_waiting = num_rows, max_waiting
        self.realtime = realtime
        self.max_batch_rows = num_rows if max_batch_rows is None else max_batch_rows
        self.wait_s, self.batch_wait_s, self.recheck_s = wait_s, batch_wait_s, recheck_s
        self.is_behind = is_behind or (lambda: False)  # a listener hearing a gap now: admit nobody
        self._free = list(range(num_rows))
        self._held: dict[int, Ticket] = {}
        self._waiters: list[_Waiter] = []
        self._recheck: asyncio.TimerHandle | None = None
        self.num_refused = 0  # streams refused (Overloaded) so far

    @property
    def num_active(self) -> int:
        return len(self._held)

    def num_held(self, priority: Priority) -> int:
        return sum(t.priority == priority for t in self._held.values())

    @property
    def num_waiting(self) -> int:
        return sum(not w.future.done() for w in self._waiters)

    def num_waiting_for(self, priority: Priority) -> int:
        return sum(w.priority == priority and not w.future.done() for w in self._waiters)

    def capacity(self) -> int:
        """Interactive streams this replica keeps real time (rows, when there is no policy)."""
        return self.realtime.capacity() if self.realtime is not None else self.num_rows

    def headroom(self) -> int:
        """Interactive streams that could still start now without waiting."""
        room = min(len(self._free), self.capacity() - self.num_held("interactive"))
        return max(0, room - self.num_waiting_for("interactive"))

    def expected_start_s(self, priority: Priority = "interactive", ahead: int = 0) -> float:
        """Seconds until one more stream of `priority` is expected to be admissible (0: now;
        inf: unknown), from the running streams' remaining frames at the predicted step period;
        `ahead`: streams about to start before it (the headroom an ingress may still fill)."""
        waiting = self.num_waiting_for(priority) + ahead
        if not waiting and self._admissible(priority):
            return 0.0
        period = self.period_s(ahead)
        ends = sorted(t.frames_left * period for t in self._held.values())
        interactive = sorted(t.frames_left * period for t in self._held.values() if t.priority == "interactive")
        need = [_kth(ends, len(self._held) + waiting + 1 - self.num_rows)]  # rows: streams that must end first
        if priority == "batch":
            need.append(_kth(sorted(t.frames_left * period for t in self._held.values() if t.priority == "batch"),
                             self.num_held("batch") + waiting + 1 - self.max_batch_rows))
        else:
            over = self.num_held("interactive") + waiting + 1 - self.capacity()
            need.append(_kth(interactive, over) if over > 0 else SOON_S)  # within capacity: a listener catching up
        return max(SOON_S, *need)  # not now: a stream whose last frame is out still holds its row a moment

    @contextlib.asynccontextmanager
    async def row(self, priority: Priority = "interactive", timeout_s: float | None = None) -> AsyncIterator[Ticket]:
        """Hold a decoder row (and so the right to a KV slot) for one stream (see above)."""
        ticket = await self._acquire(priority, timeout_s)
        try:
            yield ticket
        finally:
            self._release(ticket.row)

    def period_s(self, extra: int = 0) -> float:
        """The predicted step period with the streams held now (and `extra` more)."""
        if self.realtime is None:
            return FRAME_S
        return self.realtime.times.model.predict(max(1, len(self._held) + extra)) or FRAME_S

    def _admissible(self, priority: Priority) -> bool:
        if not self._free:
            return False
        if priority == "batch":
            return self.num_held("batch") < self.max_batch_rows
        interactive = self.num_held("interactive")
        if interactive == 0:
            return True  # a lone stream is always served
        within = self.realtime.admits(interactive) if self.realtime is not None else interactive < self.num_rows
        return within and not self.is_behind()

    def _take(self, priority: Priority) -> Ticket:
        row = heapq.heappop(self._free)
        self._held[row] = ticket = Ticket(row, priority)
        return ticket

    def _limit(self, priority: Priority, timeout_s: float | None) -> float:
        wait = self.wait_s if priority == "interactive" else self.batch_wait_s
        return min(math.inf if timeout_s is None else timeout_s, math.inf if wait is None else wait)

    async def _acquire(self, priority: Priority, timeout_s: float | None) -> Ticket:
        if not self.num_waiting_for(priority) and self._admissible(priority):
            return self._take(priority)
        expected = self.expected_start_s(priority)
        limit = self._limit(priority, timeout_s)
        line_full = self.num_waiting >= self.max_waiting + len(self._free)
        if line_full or (priority == "interactive" and expected > limit):
            self.num_refused += 1
            raise Overloaded(f"all {self.num_rows} streams are busy or at the real-time bound "
                             f"({self.num_held('interactive')} interactive, {self.num_held('batch')} batch, "
                             f"{self.num_waiting} waiting)", _finite(expected))
        waiter = _Waiter(priority, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        self._arm_recheck()
        try:
            done, _ = await asyncio.wait({waiter.future}, timeout=None if limit == math.inf else limit)
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise
        if not done:
            self._abandon(waiter)
            if timeout_s is not None and timeout_s <= limit:
                raise QueueTimeout("Request timeout expired")
            self.num_refused += 1
            raise Overloaded(f"no stream could start within {limit:g} s", _finite(self.expected_start_s(priority)))
        self._waiters.remove(waiter)
        return waiter.future.result()

    def _abandon(self, waiter: _Waiter) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)
        if waiter.future.done() and not waiter.future.cancelled():  # handed a row just as it left
            self._release(waiter.future.result().row)
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


def _kth(values: list[float], k: int) -> float:
    """The k-th smallest of sorted `values` (1-based); 0 for k <= 0, inf past the end."""
    if k <= 0:
        return 0.0
    return values[k - 1] if k <= len(values) else math.inf


def _finite(seconds: float) -> float | None:
    return None if math.isinf(seconds) else seconds
