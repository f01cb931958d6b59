"""Real time, per replica: how long an engine frame step takes at each batch size (learned
online), and from it how many interactive streams this replica keeps at or above real time.

A stream's listener consumes one frame (80 ms) per 80 ms, and the stream gets one frame per
engine step, so it stays real time while the step period is at most 80 ms / (1 + margin).
The period is measured start to start on the engine's thread (models/engine.py): the step
plus whatever that thread waited for before the next one, so the decode thread and the event
loop competing for the cores (and the GIL) show in it. What the period cannot show (a decode
or an edge that falls behind on its own) the admission sees in the streams' own playback
clocks (pipeline.py, where PCM leaves the replica).

Learning, two inputs:
- the idle profile: the period at batch sizes 1, 2, 4, ... max_num_seqs on the idle engine
  (`profile_sizes`, Engine.profile_steps), at start and again whenever the engine has been
  idle a while and the profile is old (replica.py), so a profile taken in a slow moment does
  not stay. Its points are made non-decreasing (a noisy size never looks cheaper than a
  smaller one); between them linear, beyond the largest linear in the rows.
- serving: every decode-only step while serving (the decode worker, the event loop, the
  ingress and the neighbours compete then, which the idle profile cannot see) updates an
  exponential moving average for its batch size, forgotten `forget_s` after that size last
  ran, and one `offset`: the moving average of what serving costs beyond the profile, over
  every size (a memory that outlives the sizes' estimates: the next burst starts from it).

A size that ran lately is predicted by its own average; any other by the profile plus the
offset. What serving costs beyond idle is mostly a constant per step (the other threads and
processes take their share of every step), so it carries to other sizes as an offset, not as
a ratio: a ratio taken at one row (where the overhead is a large share) priced every larger
size far above its cost, and a burst's ratio pinned the capacity at one stream until it was
forgotten (the previous rule). A slow stretch raises the offset and the sizes that ran; a few
fast steps after it bring both back, within a second. There is no slow start: a stream is
admitted or refused when it arrives (admission.py), on the prediction for the batch it makes;
the margin absorbs what the prediction misses, and a stream behind its listener stops further
admissions. The engine's thread writes (`observe`, `seed`); the event loop reads `model`, an
immutable snapshot replaced whole.
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


def monotone(points: tuple[tuple[int, float], ...]) -> tuple[tuple[int, float], ...]:
    """The least-squares non-decreasing fit of (rows, seconds) points sorted by rows (pool
    adjacent violators): a noisy larger size never looks cheaper than a smaller one."""
    blocks: list[tuple[float, int]] = []  # (sum, count) of pooled neighbours
    for _, t in points:
        blocks.append((t, 1))
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            (s1, n1), (s0, n0) = blocks.pop(), blocks.pop()
            blocks.append((s0 + s1, n0 + n1))
    fitted: list[float] = []
    for total, count in blocks:
        fitted += [total / count] * count
    return tuple((rows, t) for (rows, _), t in zip(points, fitted, strict=True))


@dataclass(frozen=True)
class RealtimeInputs:
    """What the capacity is computed from, for stats: the idle profile (smoothed) and when it
    was taken (monotonic seconds; None: never), the sizes' fresh serving averages, the
    serving offset, and the prediction per size."""

    profile: tuple[tuple[int, float], ...]
    profiled_at: float | None
    serving: tuple[tuple[int, float], ...]
    offset_s: float
    predicted: tuple[tuple[int, float], ...]


class StepTimes:
    """The learner (module docstring): `seed` and `observe` on the engine's thread, `model`
    read anywhere (a snapshot of immutable state, replaced whole on each write)."""

    def __init__(self, alpha: float = 0.2, forget_s: float = 10.0, offset_alpha: float = 0.05,
                 clock=time.monotonic) -> None:
        self.alpha, self.forget_s, self.offset_alpha, self._clock = alpha, forget_s, offset_alpha, clock
        self._estimates: dict[int, tuple[float, float]] = {}  # engine thread only: rows -> (EMA s, last seen)
        self._offset = 0.0  # engine thread only
        # (smoothed profile, estimates as sorted items, offset, when profiled): replaced whole
        self._state: tuple[tuple, tuple, float, float | None] = ((), (), 0.0, None)

    def seed(self, profile: tuple[tuple[int, float], ...]) -> None:
        """The idle periods per size (Engine.profile_steps); replaces the previous profile."""
        self._state = (monotone(tuple(sorted(profile))), self._state[1], self._state[2], self._clock())

    def observe(self, rows: int, seconds: float) -> None:
        if rows < 1 or seconds <= 0:
            return
        now, old = self._clock(), self._estimates.get(rows)
        fresh = old is None or now - old[1] > self.forget_s
        self._estimates[rows] = (seconds if fresh else old[0] + self.alpha * (seconds - old[0]), now)
        idle = StepModel(self._state[0]).predict(rows)
        if idle is not None:
            self._offset += self.offset_alpha * (seconds - idle - self._offset)
        self._state = (self._state[0], tuple(sorted(self._estimates.items())), self._offset, self._state[3])

    @property
    def model(self) -> StepModel:
        """A size's own serving average where it ran lately; elsewhere the idle profile plus
        the serving offset."""
        profile, _, offset, _ = self._state
        fresh = self._fresh()
        periods = {rows: max(0.0, seconds + offset) for rows, seconds in profile}
        periods.update(fresh)
        return StepModel(tuple(sorted(periods.items())))

    def largest_recent(self) -> int:
        """The largest batch size that ran within `forget_s` (0: none)."""
        return max(self._fresh(), default=0)

    def inputs(self, rows: int) -> RealtimeInputs:
        profile, _, offset, profiled_at = self._state
        model = self.model
        predicted = tuple((b, model.predict(b)) for b in range(1, rows + 1)) if model.periods else ()
        return RealtimeInputs(profile, profiled_at, tuple(sorted(self._fresh().items())), offset, predicted)

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
        """Whether one more interactive stream may start beside `num_interactive`: within the
        capacity (the prediction for the batch it makes)."""
        if not self.enabled:
            return num_interactive < self.rows
        return num_interactive == 0 or num_interactive < self.capacity()

    def batch_rows(self, num_interactive: int) -> int | None:
        """Batch rows that may step with `num_interactive` interactive rows (the scheduler's
        hook): all of them while no interactive row runs, else what real time leaves."""
        return None if num_interactive == 0 else max(0, self.capacity() - num_interactive)
