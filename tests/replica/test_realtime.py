"""Real-time admission at its seam, deterministic: the learned step-time model, the policy,
and the admission rule driven by a fixed model (no engine, no clock but asyncio's)."""

import asyncio
import math
import time

import pytest

from contract.errors import QueueTimeout
from models.errors import Overloaded
from replica.admission import Admission
from replica.config import ReplicaConfig
from replica.realtime import (
    FRAME_S,
    RealtimePolicy,
    StepModel,
    StepTimes,
    budget_s,
    fit_line,
    monotone,
    profile_sizes,
    slope,
)


def test_the_model_predicts_seen_sizes_interpolates_and_extrapolates_pessimistically():
    model = StepModel(((1, 0.02), (4, 0.05)))
    assert model.predict(1) == 0.02 and model.predict(4) == 0.05
    assert model.predict(2) == pytest.approx(0.03)  # between seen sizes: linear
    assert model.predict(8) == pytest.approx(0.10)  # beyond: the largest's period per row
    assert StepModel(((2, 0.03),)).predict(1) == 0.03  # fewer rows than seen: at most that
    assert StepModel().predict(3) is None


def test_capacity_is_the_most_rows_whose_step_stays_under_a_frame_with_the_margin():
    model = StepModel(((1, 0.02), (2, 0.03)))  # beyond 2: 0.015 s per row
    # margin 0.2: budget 0.0667 s -> 3 rows 0.045, 4 rows 0.06, 5 rows 0.075
    assert model.capacity(margin=0.2, limit=16) == 4
    assert model.capacity(margin=0.0, limit=16) == 5  # 5 rows take 0.075 <= 0.08
    assert model.capacity(margin=0.2, limit=3) == 3
    assert StepModel(((1, FRAME_S * 2),)).capacity(0.2, 16) == 0
    assert StepModel().capacity(0.2, 16) == 16  # nothing learned: rows bound it


def test_a_replica_starts_from_its_idle_engines_period_at_each_batch_size(make_replica):
    """With real-time admission on, the replica times batch sizes 1, 2, 4, ... max_num_seqs
    on its own engine before serving, up to the first size over twice the budget: whatever
    this machine's speed, the profile then holds a prefix of those sizes, all of them unless
    the last one measured is over that bound, made non-decreasing."""
    assert profile_sizes(16) == [1, 2, 4, 8, 16] and profile_sizes(6) == [1, 2, 4, 6] and profile_sizes(1) == [1]
    replica = make_replica(config=ReplicaConfig(realtime_admission=True), max_num_seqs=6)
    inputs = replica.stats().realtime
    sizes = [rows for rows, _ in inputs.profile]
    assert sizes == profile_sizes(6)[: len(sizes)] and sizes[0] == 1 and all(t > 0 for _, t in inputs.profile)
    assert all(a[1] <= b[1] for a, b in zip(inputs.profile, inputs.profile[1:]))
    if inputs.profile[-1][1] <= 2 * budget_s(0.2):
        assert sizes == [1, 2, 4, 6]
    assert inputs.profiled_at is not None and len(inputs.predicted) == 6
    assert replica.stats().engine.num_kv_slots_used == 0  # the profile's requests are gone


def test_the_profile_is_made_non_decreasing():
    assert monotone(((1, 0.03), (2, 0.05), (4, 0.04), (8, 0.07))) == ((1, 0.03), (2, 0.045), (4, 0.045), (8, 0.07))
    assert monotone(((1, 0.03),)) == ((1, 0.03),) and monotone(()) == ()


def test_step_times_learn_a_moving_average_per_batch_size():
    times = StepTimes(alpha=0.5)
    times.observe(2, 0.04)
    times.observe(2, 0.02)
    times.observe(1, 0.01)
    times.observe(0, 5.0)  # no rows: ignored
    assert times.inputs(2).serving == ((1, 0.01), (2, pytest.approx(0.03)))


def test_the_serving_line_leans_on_the_idle_slope_where_the_sizes_say_little():
    assert slope(((1, 0.03), (2, 0.04), (4, 0.05), (8, 0.06))) == pytest.approx(0.00395, abs=1e-4)
    assert fit_line([(1, 0.035, 1.0)], 0.002, 1.0) == (pytest.approx(0.033), 0.002)  # one size: the idle slope
    c0, c1 = fit_line([(1, 0.035, 1.0), (8, 0.08, 1.0)], 0.002, 1.0)  # far apart: their own slope, nearly
    assert c1 == pytest.approx(0.00625, abs=1e-4) and c0 + 8 * c1 == pytest.approx(0.08, abs=0.002)
    c0, c1 = fit_line([(1, 0.035, 1.0), (2, 0.045, 1.0)], 0.002, 1.0)  # neighbours: mostly the idle slope
    assert 0.002 < c1 < 0.005
    assert fit_line([(1, 0.05, 1.0), (8, 0.04, 1.0)], 0.0, 1.0)[1] == 0.0  # never cheaper with more rows
    assert fit_line([(1, 0.035, 1.0), (8, 0.2, 0.0)], 0.002, 1.0) == (pytest.approx(0.033), 0.002)  # weights


def test_serving_periods_carry_to_other_sizes_and_a_slow_stretch_passes_within_steps():
    now = [0.0]
    times = StepTimes(alpha=0.5, forget_s=10.0, clock=lambda: now[0])
    times.seed(((1, 0.03), (2, 0.04), (4, 0.05), (8, 0.06)))
    assert times.model.capacity(0.2, 8) == 5  # nothing served yet: idle + 25% (65.6 ms at five rows)
    times.observe(1, 0.037)  # serving one stream: 37 ms a step; eight: 81 ms (6.3 ms a row, not the idle 3.9)
    times.observe(8, 0.081)
    c0, c1 = times.line()
    assert 0.006 < c1 < 0.007  # the two sizes' slope, a little towards the prior (two steps each: weak)
    assert dict(times.model.periods)[6] == pytest.approx(c0 + 6 * c1)  # 68 ms: not admitted
    assert times.model.capacity(0.2, 8) == 5
    times.observe(3, 0.2)  # a slow stretch at three rows (a burst of refusals takes the cores)
    assert times.model.capacity(0.2, 8) <= 2
    for _ in range(8):  # it passes: a few fast steps at three rows bring the size back
        now[0] += 0.05
        times.observe(3, 0.05)
    assert times.model.capacity(0.2, 8) == 5


def test_a_slow_stretch_at_one_row_drops_the_capacity_though_larger_sizes_were_fast():
    """A long fast history at 2-8 rows, then the host is busy and one row steps in 105 ms: the
    line alone stays near the old sizes (its slope never goes below 0), but more rows are never
    faster than one, so the capacity is that one row at once; fast again, it comes back."""
    now = [0.0]
    times = StepTimes(alpha=0.2, clock=lambda: now[0])
    times.seed(((1, 0.02), (2, 0.023), (4, 0.03), (8, 0.044)))
    for _ in range(50):
        for rows in range(2, 9):
            times.observe(rows, 0.02 + 0.004 * rows)
    assert times.model.capacity(0.2, 8) == 8
    for _ in range(20):  # 2 s of slow single-row steps
        now[0] += 0.105
        times.observe(1, 0.105)
    c0, c1 = times.line()
    assert c0 + 2 * c1 < 0.0667  # the line alone would still admit a second stream
    policy = RealtimePolicy(times, rows=8, margin=0.2)
    assert policy.capacity() == 1  # the lone stream, always served
    for _ in range(15):  # fast again: back within about a second
        now[0] += 0.025
        times.observe(1, 0.025)
    assert policy.capacity() >= 2


def test_the_serving_memory_outlives_the_periods_and_newer_sizes_weigh_more():
    now = [0.0]
    times = StepTimes(alpha=0.5, forget_s=10.0, half_life_s=30.0, clock=lambda: now[0])
    times.seed(((1, 0.03), (2, 0.04), (4, 0.05)))
    for _ in range(20):
        times.observe(1, 0.035)
        times.observe(4, 0.065)  # serving costs 10 ms a row
    now[0] = 11.0  # no size has run for over 10 s: their periods are gone, the line stays
    assert times.largest_recent() == 0 and times.inputs(4).serving == ()
    c0, c1 = times.inputs(4).line_s
    assert c0 + c1 == pytest.approx(0.035, abs=2e-3) and c1 == pytest.approx(0.01, abs=1e-3)
    assert dict(times.model.periods)[4] == pytest.approx(0.065, abs=2e-3)
    times.seed(((1, 0.02), (2, 0.025), (4, 0.03)))
    # re-profiled when idle: the line keeps what serving showed (the new idle slope is only its prior)
    assert times.inputs(4).profiled_at == 11.0 and dict(times.model.periods)[4] == pytest.approx(0.065, abs=3e-3)
    now[0] = 71.0  # a minute later one stream costs 30 ms: the older sizes weigh a quarter as much
    times.observe(1, 0.030)
    assert times.model.predict(4) < 0.062


def test_a_burst_is_admitted_up_to_the_capacity_at_once():
    """No slow start: the prediction for the batch a stream makes decides, when it arrives."""
    times = StepTimes(prior_excess=0.0)
    times.seed(((1, 0.03), (2, 0.04), (4, 0.05)))
    policy = RealtimePolicy(times, rows=8, margin=0.2)
    assert policy.capacity() == 5  # 5 rows: 0.0625 s (beyond 4 rows: 0.0125 s a row)
    assert all(policy.admits(n) for n in range(5)) and not policy.admits(5)
    assert not RealtimePolicy(times, rows=2, margin=0.2).admits(2)  # never beyond the rows


def _policy(periods, rows=8, enabled=True):
    times = StepTimes(prior_excess=0.0)  # the periods as given
    times.seed(periods)
    return RealtimePolicy(times, rows, margin=0.2, enabled=enabled)


def test_policy_capacity_and_the_batch_rows_beside_interactive_ones():
    policy = _policy(((1, 0.03), (2, 0.06)))  # capacity 2
    assert policy.capacity() == 2
    assert policy.batch_rows(0) is None  # no interactive row: every batch row runs
    assert policy.batch_rows(1) == 1 and policy.batch_rows(2) == 0 and policy.batch_rows(3) == 0
    assert _policy(((1, 1.0),)).capacity() == 1  # a lone stream is always served
    assert _policy(((1, 1.0),), enabled=False).capacity() == 8


async def _hold(admission, priority="interactive", timeout_s=None, release: asyncio.Event | None = None,
                got: list | None = None, frames_left: float = math.inf):
    async with admission.row(priority, timeout_s) as ticket:
        ticket.frames_left = frames_left
        if got is not None:
            got.append((priority, ticket))
        await (release or asyncio.Event()).wait()


def test_interactive_streams_beyond_the_capacity_are_refused_at_once_with_when_to_retry():
    async def main():
        admission = Admission(8, max_waiting=4, realtime=_policy(((1, 0.03), (2, 0.06))), wait_s=0.3)
        release, got = asyncio.Event(), []
        holders = [asyncio.create_task(_hold(admission, release=release, got=got, frames_left=n)) for n in (100, 50)]
        await asyncio.sleep(0.01)
        assert len(got) == 2 and admission.headroom() == 0 and admission.capacity() == 2
        t0 = time.monotonic()
        with pytest.raises(Overloaded, match="busy or at the real-time bound") as refused:  # a free row, no headroom
            await _hold(admission)
        assert time.monotonic() - t0 < 0.05  # at once: no stream ends within the wait
        assert refused.value.retry_after_s == pytest.approx(50 * 0.06)  # the sooner one ends in 50 steps of 60 ms
        assert admission.num_waiting == 0 and admission.num_active == 2
        got[1][1].frames_left = 2  # now one ends within two steps (0.12 s): worth the short wait
        waiter = asyncio.create_task(_hold(admission, got=got))
        await asyncio.sleep(0.05)
        assert len(got) == 2 and admission.num_waiting == 1
        release.set()  # the two end: the waiter starts
        await asyncio.gather(*holders)
        await asyncio.sleep(0.01)
        assert len(got) == 3 and admission.num_active == 1
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert admission.num_active == 0 and admission.headroom() == 2
        for _ in range(2):  # unknown ends (text still coming): refused at once, no estimate
            holders.append(asyncio.create_task(_hold(admission)))
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded) as refused:
            await _hold(admission)
        assert refused.value.retry_after_s is None
        for h in holders:
            h.cancel()
        await asyncio.gather(*holders, return_exceptions=True)

    asyncio.run(main())


def test_when_one_more_can_start_once_the_headroom_is_spent():
    """What a replica tells the ingresses (expected_start_s with `ahead` = its headroom): with
    room for one more now, the stream after that one starts when a running one ends; never 0,
    which would have every refused client retry at once, 1 ms later."""
    async def main():
        admission = Admission(8, max_waiting=4, realtime=_policy(((1, 0.03), (2, 0.06), (3, 0.2))), wait_s=0.3)
        holder = asyncio.create_task(_hold(admission, frames_left=40))
        await asyncio.sleep(0.01)
        room = admission.headroom()
        assert room == 1 and admission.expected_start_s() == 0.0
        assert admission.expected_start_s(ahead=room) == pytest.approx(40 * 0.06)  # the held one's 40 steps at batch 2
        holder.cancel()
        await asyncio.gather(holder, return_exceptions=True)
        assert admission.expected_start_s(ahead=admission.headroom()) == math.inf  # nothing running: unknown

    asyncio.run(main())


def test_a_wait_ends_when_the_expected_headroom_does_not_come():
    async def main():
        admission = Admission(8, max_waiting=4, realtime=_policy(((1, 0.03), (2, 0.06))), wait_s=0.2)
        holders = [asyncio.create_task(_hold(admission, frames_left=n)) for n in (1, 1)]  # "ending", but never do
        await asyncio.sleep(0.01)
        t0 = time.monotonic()
        with pytest.raises(Overloaded, match="within 0.2 s"):
            await _hold(admission)
        assert 0.2 <= time.monotonic() - t0 < 0.4
        for h in holders:
            h.cancel()
        await asyncio.gather(*holders, return_exceptions=True)
        assert admission.num_active == 0 and admission.num_waiting == 0

    asyncio.run(main())


def test_a_requests_own_timeout_ends_its_wait_with_queue_timeout():
    async def main():
        admission = Admission(2, max_waiting=2, realtime=_policy(((1, 0.07),)), wait_s=30, batch_wait_s=30)
        holder = asyncio.create_task(_hold(admission, frames_left=1))  # expected to end at once: a waiter waits
        await asyncio.sleep(0.01)
        with pytest.raises(QueueTimeout, match="Request timeout expired"):
            await _hold(admission, timeout_s=0.1)
        batch = asyncio.create_task(_hold(admission, "batch"))  # the other row
        await asyncio.sleep(0.01)
        with pytest.raises(QueueTimeout):  # a batch stream waits for a row: its own timeout ends that too
            await _hold(admission, "batch", timeout_s=0.1)
        holder.cancel()
        batch.cancel()
        await asyncio.gather(holder, batch, return_exceptions=True)
        assert admission.num_active == 0 and admission.num_waiting == 0

    asyncio.run(main())


def test_batch_streams_need_only_a_row_within_their_share_and_interactive_waiters_go_first():
    async def main():
        admission = Admission(4, max_waiting=4, realtime=_policy(((1, 0.07),)), max_batch_rows=2, wait_s=5)
        release, got = asyncio.Event(), []
        tasks = [asyncio.create_task(_hold(admission, release=release, got=got, frames_left=1))]  # capacity 1
        tasks += [asyncio.create_task(_hold(admission, "batch", release=release, got=got)) for _ in range(2)]
        await asyncio.sleep(0.01)
        assert sorted(p for p, _ in got) == ["batch", "batch", "interactive"]  # batch ignores the real-time bound
        tasks.append(asyncio.create_task(_hold(admission, "batch", got=got)))  # over the batch share: waits
        tasks.append(asyncio.create_task(_hold(admission, got=got)))  # at the bound, the stream ends soon: waits
        await asyncio.sleep(0.01)
        assert len(got) == 3 and admission.num_waiting == 2
        release.set()  # everything ends at once: the interactive waiter is served before the batch one
        await asyncio.sleep(0.01)
        assert [p for p, _ in got[3:]] == ["interactive", "batch"]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert admission.num_active == 0

    asyncio.run(main())


def test_a_stream_behind_its_listener_holds_new_interactive_streams_back():
    async def main():
        behind = [True]
        admission = Admission(4, max_waiting=4, realtime=_policy(((1, 0.01),)), wait_s=5, is_behind=lambda: behind[0],
                              recheck_s=0.01)
        got = []
        tasks = [asyncio.create_task(_hold(admission, got=got)) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert len(got) == 1  # the first is always admitted; the second waits while the first is behind
        behind[0] = False  # it caught up: the periodic recheck admits the waiter
        await asyncio.sleep(0.05)
        assert len(got) == 2
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


def test_the_line_is_bounded_by_the_waiting_places_plus_the_free_rows():
    async def main():
        admission = Admission(2, max_waiting=0, realtime=_policy(((1, 0.07),)), max_batch_rows=1, batch_wait_s=5)
        tasks = [asyncio.create_task(_hold(admission, "batch")) for _ in range(2)]  # 1 admitted, 1 waits (free row)
        await asyncio.sleep(0.01)
        assert admission.num_active == 1 and admission.num_waiting == 1
        with pytest.raises(Overloaded, match="busy"):  # no place left in the line: refused at once
            await _hold(admission, "batch")
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert admission.num_active == 0 and admission.num_waiting == 0

    asyncio.run(main())
