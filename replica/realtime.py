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
- serving: every decode-only step while serving (the decode worker, the event loop, Ray's
  transport of every chunk, the ingress and the neighbours compete then, which the idle
  profile cannot see) updates an exponential moving average of the period for its batch
  size, forgotten `forget_s` after that size last ran, and one of what serving costs beyond
  the profile (the excess) for that size, kept longer (its weight halves every
  `excess_half_life_s`): a memory that outlives the periods, so the next burst starts from it.

A size that ran lately is predicted by its own average period; any other by the profile plus
the excess at its size, from a line `a + b x rows` fitted to the sizes' excesses (weighted by
their age; with one size known, the least-norm split between the two terms). Before anything
was served (a fresh replica's first burst), the excess is taken as `prior_excess` of each
size's idle period (25%: what serving cost beyond idle through `make serve` here, at most). What serving
costs beyond idle has a part per step (metrics, the loop's own work) and a part per stream
(each one's chunks are decoded, moved across Ray and encoded beside the engine's steps, and
take the GIL and the cores from it): measured through `make serve` on 2 cores with csm-tiny,
+5 ms a step at one stream, +10 to +17 ms at seven or eight. Not as a ratio of the whole step
(the previous rule): a ratio taken at one row (where the overhead is a large share) priced
every larger size far above its cost, and a burst's ratio pinned the capacity at one stream
until it was forgotten. A slow stretch raises the sizes that ran; fast steps after it bring
them back within a second or two, and a size's newer excess outweighs its older one.
There is no slow start: a stream is admitted or refused when it
arrives (admission.py), on the prediction for the batch it makes; the margin absorbs what the
prediction misses, and a stream behind its listener stops further admissions. The engine's thread writes (`observe`, `seed`); the event loop reads `model`, an
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
    was taken (monotonic seconds; None: never), the sizes' fresh serving periods, the fitted
    excess of serving over idle (seconds per step, and per row; None: nothing served yet, the
    prior), and the prediction per size."""

    profile: tuple[tuple[int, float], ...]
    profiled_at: float | None
    serving: tuple[tuple[int, float], ...]
    excess_s: tuple[float, float] | None
    predicted: tuple[tuple[int, float], ...]


def fit_excess(points: list[tuple[int, float, float]]) -> tuple[float, float]:
    """(a, b) >= 0 of the line a + b x rows through (rows, excess seconds, weight) points, by
    weighted least squares with a vanishing ridge (one size known: the least-norm split)."""
    ridge = 1e-9
    s00 = sum(w for _, _, w in points) + ridge
    s01 = sum(w * r for r, _, w in points)
    s11 = sum(w * r * r for r, _, w in points) + ridge
    t0 = sum(w * x for _, x, w in points)
    t1 = sum(w * r * x for r, x, w in points)
    det = s00 * s11 - s01 * s01
    a, b = (s11 * t0 - s01 * t1) / det, (s00 * t1 - s01 * t0) / det
    if a < 0:  # the best line through the origin
        return 0.0, max(0.0, t1 / s11)
    if b < 0:  # the best constant
        return max(0.0, t0 / s00), 0.0
    return a, b


class StepTimes:
    """The learner (module docstring): `seed` and `observe` on the engine's thread, `model`
    read anywhere (a snapshot of immutable state, replaced whole on each write)."""

    def __init__(self, alpha: float = 0.2, forget_s: float = 10.0, excess_half_life_s: float = 30.0,
                 prior_excess: float = 0.25, clock=time.monotonic) -> None:
        self.alpha, self.forget_s, self.excess_half_life_s, self._clock = alpha, forget_s, excess_half_life_s, clock
        self.prior_excess = prior_excess
        self._estimates: dict[int, tuple[float, float]] = {}  # engine thread only: rows -> (EMA s, last seen)
        self._excess: dict[int, tuple[float, float]] = {}  # engine thread only: rows -> (EMA excess s, last seen)
        # (smoothed profile, estimates, excesses as sorted items, when profiled): replaced whole
        self._state: tuple[tuple, tuple, tuple, float | None] = ((), (), (), None)

    def seed(self, profile: tuple[tuple[int, float], ...]) -> None:
        """The idle periods per size (Engine.profile_steps); replaces the previous profile."""
        self._state = (monotone(tuple(sorted(profile))), self._state[1], self._state[2], self._clock())

    def observe(self, rows: int, seconds: float) -> None:
        if rows < 1 or seconds <= 0:
            return
        now = self._clock()
        self._estimates[rows] = self._average(self._estimates.get(rows), seconds, now, self.forget_s)
        idle = StepModel(self._state[0]).predict(rows)
        if idle is not None:
            self._excess[rows] = self._average(self._excess.get(rows), seconds - idle, now, self.forget_s)
        self._state = (self._state[0], tuple(sorted(self._estimates.items())), tuple(sorted(self._excess.items())),
                       self._state[3])

    def _average(self, old: tuple[float, float] | None, value: float, now: float, fresh_s: float) -> tuple[float, float]:
        """The moving average with `value`, started anew if the old one is over `fresh_s` old."""
        if old is None or now - old[1] > fresh_s:
            return value, now
        return old[0] + self.alpha * (value - old[0]), now

    def excess(self) -> tuple[float, float] | None:
        """(per step, per row) seconds serving costs beyond the idle profile, fitted; None
        before anything was served."""
        now = self._clock()
        points = [(rows, x, 0.5 ** ((now - seen) / self.excess_half_life_s)) for rows, (x, seen) in self._state[2]]
        return fit_excess(points) if points else None

    @property
    def model(self) -> StepModel:
        """A size's own serving average where it ran lately; elsewhere the idle profile plus
        the fitted excess at its size."""
        profile = self._state[0]
        fresh = self._fresh()
        if not profile:
            return StepModel(tuple(sorted(fresh.items())))
        sizes = {rows for rows, _ in profile} | set(fresh)
        sizes |= set(range(1, max(sizes) + 1))  # every size, so the excess grows row by row
        idle, excess = StepModel(profile), self.excess()
        if excess is None:  # nothing served yet: the prior
            periods = {rows: idle.predict(rows) * (1.0 + self.prior_excess) for rows in sizes}
        else:
            periods = {rows: max(0.0, idle.predict(rows) + excess[0] + excess[1] * rows) for rows in sizes}
        periods.update(fresh)
        return StepModel(tuple(sorted(periods.items())))

    def largest_recent(self) -> int:
        """The largest batch size that ran within `forget_s` (0: none)."""
        return max(self._fresh(), default=0)

    def inputs(self, rows: int) -> RealtimeInputs:
        model = self.model
        predicted = tuple((b, model.predict(b)) for b in range(1, rows + 1)) if model.periods else ()
        return RealtimeInputs(self._state[0], self._state[3], tuple(sorted(self._fresh().items())), self.excess(),
                              predicted)

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
