"""Real time, per replica: how long an engine frame step takes at each batch size (learned
online), and from it how many interactive streams this replica keeps at or above real time.

A stream's listener consumes one frame (80 ms) per 80 ms, and the stream gets one frame per
engine step, so it stays real time while the step period is at most 80 ms / (1 + margin).
The period is measured start to start on the engine's thread (models/engine.py): the step
plus whatever that thread waited for before the next one, so the decode thread and the event
loop competing for the cores (and the GIL) show in it. What the period cannot show (a decode
or an edge that falls behind on its own) the admission sees in the streams' own playback
clocks (pipeline.py, where PCM leaves the replica).

Learning, from two inputs:
- the idle profile: the period at batch sizes 1, 2, 4, ... max_num_seqs on the idle engine
  (`profile_sizes`, Engine.profile_steps), at start and again whenever the engine has been
  idle a while and the profile is old (replica.py). Its points are made non-decreasing, and a
  straight line fitted to them gives what one more row costs idle (the idle slope).
- serving: every decode-only step while serving updates an exponential moving average of the
  period for its batch size. The decode worker, the event loop, Ray's transport of every chunk
  and the neighbours compete then, which the idle profile cannot see: through `make serve` on
  2 cores with csm-tiny a stream costs 2-3 times the idle slope (its chunks are decoded, moved
  and encoded beside the engine's steps, and take the GIL from them), and the idle profile
  itself is off by 10 ms at one row when taken in a noisy moment.

Every size is predicted by a line `c0 + c1 x rows` fitted to the sizes' serving averages, each
weighted by its age (halving every `half_life_s`: a memory that outlives a burst, so the next
one starts from it) and by how many steps it averages (a size seen for a few steps, in a
transient, counts less), with twice the idle slope (`prior_slope_factor`: what a served row
costs here, at least) as a prior on `c1` (`prior_weight`): one size served gives the line
through it with that slope; sizes far apart give their own slope; two neighbouring sizes,
whose noisy difference says little, mostly the prior again. Not each size by its own average:
on a noisy host one slow stretch at the size just above the running one priced that size over
the budget, so it never ran again to be measured anew (pinned, until forgotten). Not the
profile scaled by serving's ratio over idle at the largest size (the rule before): a ratio
taken at one row priced every larger size far above its cost, and a burst's ratio pinned the
capacity at one stream. Before anything was served (a fresh replica's first burst), the idle
profile plus `prior_excess` (25%). More rows never step faster, so what the sizes that ran
within the last `floor_s` (2 s) cost now is a floor under every larger size: a slow stretch at
one row (the host busy elsewhere) drops the capacity to that row at once, though a long fast
history at larger sizes would hold the line down (a line's slope is never below 0). A slow
stretch raises the sizes that ran; fast steps after it bring them back within a second or two.
There is no slow start: a stream is admitted or refused when it arrives (admission.py), on
the prediction for the batch it makes; the margin
absorbs what the prediction misses, and a stream behind its listener stops further admissions.
The engine's thread writes (`observe`, `seed`); the event loop reads `model`, an immutable
snapshot replaced whole.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass

from contract.stats import RealtimeInputs
from models.params import FRAME_RATE_HZ

FRAME_S = 1.0 / FRAME_RATE_HZ
CONFIDENCE_STEPS = 5  # a size's average weighs n / (n + 5) after n steps


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


def slope(points: tuple[tuple[int, float], ...]) -> float:
    """The least-squares slope (seconds per row, at least 0) of (rows, seconds) points."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_x, mean_y = sum(r for r, _ in points) / n, sum(t for _, t in points) / n
    sxx = sum((r - mean_x) ** 2 for r, _ in points)
    return max(0.0, sum((r - mean_x) * (t - mean_y) for r, t in points) / sxx) if sxx else 0.0


def fit_line(points: list[tuple[int, float, float]], prior_slope: float, prior_weight: float) -> tuple[float, float]:
    """(c0, c1) of the line c0 + c1 x rows through (rows, seconds, weight) points, by weighted
    least squares with (c1 - prior_slope)^2 x prior_weight added: one point gives the line
    through it with the prior slope; c1 is never below 0."""
    w = sum(p[2] for p in points)
    x, y = sum(r * wt for r, _, wt in points), sum(t * wt for _, t, wt in points)
    xx, xy = sum(r * r * wt for r, _, wt in points), sum(r * t * wt for r, t, wt in points)
    c1 = max(0.0, (xy - x * y / w + prior_weight * prior_slope) / (xx - x * x / w + prior_weight))
    return (y - c1 * x) / w, c1


class StepTimes:
    """The learner (module docstring): `seed` and `observe` on the engine's thread, `model`
    read anywhere (a snapshot of immutable state, replaced whole on each write)."""

    def __init__(self, alpha: float = 0.2, forget_s: float = 10.0, half_life_s: float = 30.0,
                 prior_weight: float = 1.0, prior_slope_factor: float = 2.0, prior_excess: float = 0.25,
                 floor_s: float = 2.0, clock=time.monotonic) -> None:
        self.alpha, self.forget_s, self.half_life_s, self._clock = alpha, forget_s, half_life_s, clock
        self.floor_s = floor_s
        self.prior_weight, self.prior_slope_factor, self.prior_excess = prior_weight, prior_slope_factor, prior_excess
        self._estimates: dict[int, tuple[float, float, int]] = {}  # engine thread only: rows -> (EMA s, last seen, n)
        # (smoothed profile, its slope, estimates as sorted items, when profiled): replaced whole
        self._state: tuple[tuple, float, tuple, float | None] = ((), 0.0, (), None)

    def seed(self, profile: tuple[tuple[int, float], ...]) -> None:
        """The idle periods per size (Engine.profile_steps); replaces the previous profile."""
        smooth = monotone(tuple(sorted(profile)))
        self._state = (smooth, slope(smooth), self._state[2], self._clock())

    def observe(self, rows: int, seconds: float) -> None:
        if rows < 1 or seconds <= 0:
            return
        now, old = self._clock(), self._estimates.get(rows)
        if old is None or now - old[1] > self.forget_s:  # a size not seen lately starts anew
            self._estimates[rows] = (seconds, now, 1)
        else:
            self._estimates[rows] = (old[0] + self.alpha * (seconds - old[0]), now, old[2] + 1)
        self._state = (self._state[0], self._state[1], tuple(sorted(self._estimates.items())), self._state[3])

    def line(self) -> tuple[float, float] | None:
        """The serving line (c0, c1) fitted to every size's average; None before any served."""
        _, idle_slope, estimates, _ = self._state
        if not estimates:
            return None
        now = self._clock()
        points = [(rows, t, 0.5 ** ((now - seen) / self.half_life_s) * n / (n + CONFIDENCE_STEPS))
                  for rows, (t, seen, n) in estimates]
        return fit_line(points, self.prior_slope_factor * idle_slope, self.prior_weight)

    @property
    def model(self) -> StepModel:
        """The serving line (or, before anything was served, the idle profile plus the prior
        excess) at every size."""
        profile, fresh, line = self._state[0], self._fresh(), self.line()
        sizes = {rows for rows, _ in profile} | {rows for rows, _ in self._state[2]}
        if not sizes:
            return StepModel()
        sizes |= set(range(1, max(sizes) + 1))  # every size, so the line is followed row by row
        if line is not None:
            periods, floor, now = {}, 0.0, self._clock()
            running = {rows: ema for rows, (ema, seen, _) in self._state[2] if now - seen <= self.floor_s}
            for rows in sorted(sizes):  # what ran just now bounds every larger size from below
                floor = max(floor, running.get(rows, 0.0))
                periods[rows] = max(floor, line[0] + line[1] * rows)
        elif profile:
            idle = StepModel(profile)
            periods = {rows: idle.predict(rows) * (1.0 + self.prior_excess) for rows in sizes}
        else:
            periods = dict(fresh)
        return StepModel(tuple(sorted(periods.items())))

    def largest_recent(self) -> int:
        """The largest batch size that ran within `forget_s` (0: none)."""
        return max(self._fresh(), default=0)

    def inputs(self, rows: int) -> RealtimeInputs:
        model = self.model
        predicted = tuple((b, model.predict(b)) for b in range(1, rows + 1)) if model.periods else ()
        return RealtimeInputs(self._state[0], self._state[3], tuple(sorted(self._fresh().items())), self.line(),
                              predicted)

    def _fresh(self) -> dict[int, float]:
        now = self._clock()
        return {rows: ema for rows, (ema, seen, _) in self._state[2] if now - seen <= self.forget_s}


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
