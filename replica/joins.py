"""When a text may join the engine: its prefill must not make a playing stream run dry.

A step that prefills a joining text (a new stream's first, or a stream's next) costs more than
a decode step: the backbone runs over the prompt, and one more row is sampled (measured on 2
cores with csm-tiny: +5 to +17 ms a joiner, +40 ms for five joining at once). Every playing
stream waits for that step. A stream deep into its audio has a buffer to absorb it; one that
just started has one frame out (80 ms) and hears a gap. So a text joins only while every
playing interactive listener has slack (audio delivered, not yet played) for it: the step
under way, the joining step with every joiner released but not yet prefilled, and a margin (the
joining stream's own listener is not counted: waiting would not give it slack):

    min slack >= 2 x period + (joiners + 1) x join cost + margin

else it waits (re-checked every `recheck_s`), at most `max_defer_s`, after which it joins
anyway (its own first audio is worth more than a few ms of someone's gap). A stream that starts
while others are joining or waiting to (a burst: its prefill ran a step before theirs) holds its
first chunk until it covers their joining step (`next_step_s`; pipeline.py): a frame or two
more of first-audio time instead of a gap after the first frame, and the slack that lets the
waiting ones join. Joiners released
together prefill in one step. The join cost per joiner is learned from the engine's steps
(`observe`: a step's time beyond the predicted decode step, per prefill). No playing listener
(all batch, or all waiting for their client's text): nothing to protect, a text joins at once;
a stream whose first chunk is on its way out (`starting`) counts as a listener with no slack.
Event-loop state, except `observe` (the engine's thread writes one float).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from contract.playback import PlaybackClock
from .realtime import FRAME_S


class JoinGate:
    def __init__(self, clocks: dict[str, PlaybackClock], period_s: Callable[[], float], max_defer_s: float = 0.3,
                 margin_s: float = 0.02, recheck_s: float = 0.01, alpha: float = 0.2) -> None:
        """`clocks`: the playing interactive streams' listeners (the pipeline's); `period_s()`:
        the predicted step period now."""
        self._clocks, self._period_s = clocks, period_s
        self.max_defer_s, self.margin_s, self.recheck_s, self.alpha = max_defer_s, margin_s, recheck_s, alpha
        self.join_cost_s = FRAME_S / 4  # per joiner; replaced by what the steps show
        self._joining = 0  # released, not yet prefilled
        self._waiting = 0  # waiting for slack to join
        self.starting: set[str] = set()  # streams whose first chunk is decided but not out yet: no slack
        self.num_deferred = 0  # texts that waited for slack (stats)

    def observe(self, num_prefills: int, step_s: float, decode_s: float) -> None:
        """A step with `num_prefills` joiners took `step_s`, where a decode step would take
        `decode_s` (the engine's thread)."""
        if num_prefills > 0 and step_s > 0:
            sample = max(0.0, step_s - decode_s) / num_prefills
            self.join_cost_s += self.alpha * (sample - self.join_cost_s)

    @property
    def num_joining(self) -> int:
        """Texts released to join whose prefill has not run yet, and texts waiting to join."""
        return self._joining + self._waiting

    def next_step_s(self) -> float:
        """How long the next step is expected to take: a decode step, and the joiners
        released or waiting (they will join within `max_defer_s`)."""
        return self._period_s() + (self._joining + self._waiting) * self.join_cost_s

    def room(self, now: float, stream: str | None = None) -> bool:
        """Whether one more text of `stream` may join now (its own listener is not counted:
        waiting would not give it slack)."""
        if self.starting - {stream}:
            return False  # a stream about to play has nothing buffered yet
        slacks = [s for key, clock in self._clocks.items() if key != stream and (s := clock.slack(now)) is not None]
        if not slacks:
            return True
        need = 2 * self._period_s() + (self._joining + 1) * self.join_cost_s + self.margin_s
        return min(slacks) >= need

    async def enter(self, stream: str) -> Joining:
        """Wait until a text of `stream` may join (or `max_defer_s` passed); it counts as
        joining until `leave()` (its first frame came, or it ended)."""
        start = time.monotonic()
        if not self.room(start, stream):
            self.num_deferred += 1
            self._waiting += 1
            try:
                while not self.room(now := time.monotonic(), stream) and now - start < self.max_defer_s:
                    await asyncio.sleep(self.recheck_s)
            finally:
                self._waiting -= 1
        self._joining += 1
        return Joining(self)

    def _left(self) -> None:
        self._joining -= 1


class Joining:
    """A text released to join the engine, until its prefill is done."""

    def __init__(self, gate: JoinGate) -> None:
        self._gate: JoinGate | None = gate

    def leave(self) -> None:
        """Its prefill is done (or it ended); idempotent."""
        if self._gate is not None:
            self._gate._left()
            self._gate = None
