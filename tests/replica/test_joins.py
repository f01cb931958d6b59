"""When a text may join the engine (replica/joins.py), deterministic: listeners' clocks driven by
hand, the step period fixed, asyncio's own clock for the waits."""

import asyncio
import time

from contract.playback import PlaybackClock
from replica.joins import JoinGate


def _listener(now: float, buffered_s: float) -> PlaybackClock:
    """A listener that started playing just now with `buffered_s` of audio delivered."""
    clock = PlaybackClock()
    clock.delivered(now, round(buffered_s * 24_000))
    return clock


def test_a_text_joins_only_while_every_playing_listener_has_slack_for_the_joining_step():
    now = time.monotonic()
    clocks = {"a": _listener(now, 0.4)}
    gate = JoinGate(clocks, period_s=lambda: 0.05, margin_s=0.02)
    gate.join_cost_s = 0.03
    assert gate.room(now, "new")  # 0.4 s buffered >= 2 x 50 ms + 30 ms + 20 ms
    clocks["b"] = _listener(now, 0.08)  # one frame out: the joining step would run it dry
    assert not gate.room(now, "new")
    assert gate.room(now, "b")  # b's own next text: waiting would not give b slack
    del clocks["b"]
    clocks["c"] = PlaybackClock()  # not playing yet (no chunk out): nothing to protect
    assert gate.room(now, "new")


def test_joiners_released_together_count_against_the_slack():
    async def main():
        now = time.monotonic()
        clocks = {"a": _listener(now, 0.21)}
        gate = JoinGate(clocks, period_s=lambda: 0.05, margin_s=0.02)
        gate.join_cost_s = 0.05
        first = await gate.enter("x")  # 0.21 >= 0.1 + 0.05 + 0.02
        assert gate.num_joining == 1 and not gate.room(time.monotonic(), "y")  # a second needs 0.1 + 0.1 + 0.02
        assert gate.next_step_s() == 0.05 + 0.05
        first.leave()
        first.leave()  # idempotent
        assert gate.num_joining == 0 and gate.room(time.monotonic(), "y")

    asyncio.run(main())


def test_a_deferred_text_joins_once_the_listener_has_slack_or_after_the_longest_deferral():
    async def main():
        now = time.monotonic()
        clocks = {"a": _listener(now, 0.1)}
        gate = JoinGate(clocks, period_s=lambda: 0.05, max_defer_s=0.2, margin_s=0.02, recheck_s=0.005)
        gate.join_cost_s = 0.03
        t0 = time.monotonic()
        joiner = asyncio.create_task(gate.enter("new"))
        await asyncio.sleep(0.05)
        assert not joiner.done()  # 0.1 s buffered, 0.15 s needed
        clocks["a"].delivered(time.monotonic(), 24_000)  # a second more arrives: room now
        (await joiner).leave()
        assert time.monotonic() - t0 < 0.15 and gate.num_deferred == 1
        clocks["b"] = _listener(time.monotonic(), 0.0)  # dry: never room
        t0 = time.monotonic()
        (await gate.enter("late")).leave()
        assert 0.2 <= time.monotonic() - t0 < 0.3  # joins anyway: its own first audio matters too

    asyncio.run(main())


def test_the_join_cost_is_learned_from_steps_that_prefilled():
    gate = JoinGate({}, period_s=lambda: 0.05, alpha=0.5)
    gate.observe(2, step_s=0.11, decode_s=0.05)  # 30 ms a joiner
    assert abs(gate.join_cost_s - (0.02 + 0.5 * (0.03 - 0.02))) < 1e-9
    gate.observe(0, step_s=1.0, decode_s=0.05)  # a step without prefills teaches nothing
    assert abs(gate.join_cost_s - 0.025) < 1e-9
