"""Real time, per replica: how long an engine frame step takes at each batch size (learned
online), and from it how many interactive streams this replica keeps at or above real time.

A stream's listener consumes one frame (80 ms) per 80 ms, and the stream gets one frame per
engine step, so it stays real time while the step period is at most 80 ms / (1 + margin).
The period is measured start to start on the engine's thread (models/engine.py): the step
plus whatever that thread waited for before the next one, so the decode thread and the event
loop competing for the cores (and the GIL) show in it. What the period cannot show (a decode
or an edge that falls behind on its own) the admission sees in the streams' own playback
clocks (pipeline.py, where PCM leaves the replica).

Learning: at start, the replica times the period at batch sizes 1, 2, 4, ... max_num_seqs on
its idle engine (`profile_sizes`, Engine.profile_steps: a few steps each, stopping at the
first size over the budget, so a model too slow for real time costs one size); then an
exponential moving average per batch size from every decode-only step while serving (with
the decode worker and the event loop competing, which the idle profile cannot see), forgotten
30 s after that size last ran; sizes without a fresh estimate take the profile scaled by
serving's cost over idle (StepTimes.model). New streams join one row at a time beyond the
largest batch that ran lately (RealtimePolicy.admits), so each size is seen before the next. At a
batch size not seen: linear interpolation between seen sizes; beyond the largest seen, its
period scaled linearly with the rows (pessimistic: a batch costs at most proportionally
more). Without the profile that extrapolation alone would never let a replica whose one-row
step takes more than half the budget try a second row, and so never learn it is cheap. The engine's thread
writes (`observe`); the event loop reads `model`, an immutable snapshot replaced whole.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass

from models.params import FRAME_RATE_HZ

FRAME_S = 1.0 / FRAME_RATE_HZ


@dataclass(frozen=True)
class StepModel:
    periods: tuple[tuple[int, float], ...] = ()  # (rows, seconds per step), ascending rows

    def predict(self, rows: int) -> float | None:
        """Seconds per step with `rows` streams decoding; None before anything was seen."""
        if not self.periods:
            return None
        sizes = [b for b, _ in self.periods]
        i = bisect.bisect_left(sizes, rows)
        if i < len(sizes) and sizes[i] == rows:
            return self.periods[i][1]
        if i == len(sizes):
            b, t = self.periods[-1]
            return t * rows / b
        if i == 0:
            return self.periods[0][1]  # fewer rows than any seen: at most the smallest size's period
        (b0, t0), (b1, t1) = self.periods[i - 1], self.periods[i]
        return t0 + (t1 - t0) * (rows - b0) / (b1 - b0)

    def capacity(self, margin: float, limit: int) -> int:
        """The most rows (at most `limit`) predicted to step within 80 ms / (1 + margin); with
        nothing learned yet, `limit`."""
        budget, rows = budget_s(margin), 0
        while rows < limit:
            period = self.predict(rows + 1)
            if period is not None and period > budget:
                break
            rows += 1
        return rows


def profile_sizes(rows: int) -> list[int]:
    """Batch sizes the start-up profile times: powers of two below `rows`, and `rows`."""
    sizes, size = [], 1
    while size < rows:
        sizes.append(size)
        size *= 2
    return [*sizes, rows]


def budget_s(margin: float) -> float:
    """The longest step period that keeps a stream real time with `margin` to spare."""
    return FRAME_S / (1.0 + margin)


class StepTimes:
    """The learner: `seed` (the start-up profile) and `observe` on the engine's thread,
    `model` read anywhere (a snapshot of the immutable state, replaced whole on each write).

    A size's serving estimate is forgotten `forget_s` after it was last observed: the size
    falls back to its profile value. Sizes above the current capacity are not visited, so
    without this one slow stretch (a burst of prefills, a noisy neighbour) would lower the
    capacity for good; with it the replica tries that size again once the estimate is old,
    within the margin, and learns it anew."""

    def __init__(self, alpha: float = 0.2, forget_s: float = 30.0, clock=time.monotonic) -> None:
        self.alpha, self.forget_s, self._clock = alpha, forget_s, clock
        self._estimates: dict[int, tuple[float, float]] = {}  # engine thread only: rows -> (EMA s, last seen)
        self._state: tuple[tuple, tuple] = ((), ())  # (profile, estimates) as sorted item tuples

    def seed(self, profile: tuple[tuple[int, float], ...]) -> None:
        """The idle periods per size (Engine.profile_steps): what each size falls back to."""
        self._state = (tuple(sorted(profile)), self._state[1])

    def observe(self, rows: int, seconds: float) -> None:
        if rows < 1 or seconds <= 0:
            return
        now, old = self._clock(), self._estimates.get(rows)
        fresh = old is None or now - old[1] > self.forget_s
        self._estimates[rows] = (seconds if fresh else old[0] + self.alpha * (seconds - old[0]), now)
        self._state = (self._state[0], tuple(sorted(self._estimates.items())))

    @property
    def model(self) -> StepModel:
        """Fresh serving estimates where a size ran lately; elsewhere the idle profile, scaled
        by what serving costs now against idle at the largest size that ran lately (the
        decode worker, the event loop and the neighbours slow every size alike)."""
        profile, fresh = self._state[0], self._fresh()
        scale = 1.0
        if fresh and profile:
            top = max(fresh)
            scale = fresh[top] / StepModel(profile).predict(top)
        periods = {rows: seconds * scale for rows, seconds in profile}
        periods.update(fresh)
        return StepModel(tuple(sorted(periods.items())))

    def largest_recent(self) -> int:
        """The largest batch size that ran within `forget_s` (0: none)."""
        return max(self._fresh(), default=0)

    def _fresh(self) -> dict[int, float]:
        now = self._clock()
        return {rows: ema for rows, (ema, seen) in self._state[1] if now - seen <= self.forget_s}


@dataclass(frozen=True)
class RealtimePolicy:
    """How many interactive streams may run at once, and how many batch-priority rows may
    step beside them. `enabled` False: the fixed rows are the only bound (capacity = rows)."""

    times: StepTimes
    rows: int  # the replica's rows (max_num_seqs)
    margin: float = 0.2
    enabled: bool = True

    def capacity(self) -> int:
        """Interactive streams kept real time: at least 1 (a lone stream is always served)."""
        if not self.enabled:
            return self.rows
        return max(1, self.times.model.capacity(self.margin, self.rows))

    def admits(self, num_interactive: int) -> bool:
        """Whether one more interactive stream may start beside `num_interactive`: within
        the capacity, and growing one row at a time (slow start): at most one row beyond the
        largest batch that ran lately, so the cost of each new size is seen before the next
        (a burst of arrivals is not all admitted on the idle profile's word)."""
        if not self.enabled:
            return num_interactive < self.rows
        return num_interactive == 0 or (num_interactive < self.capacity()
                                         and num_interactive <= self.times.largest_recent())

    def batch_rows(self, num_interactive: int) -> int | None:
        """Batch rows that may step with `num_interactive` interactive rows (the scheduler's
        hook): all of them while no interactive row runs, else what real time leaves."""
        return None if num_interactive == 0 else max(0, self.capacity() - num_interactive)
