"""Real-time admission at its seam, deterministic: the learned step-time model, the policy,
and the admission rule driven by a fixed model (no engine, no clock but asyncio's)."""

import asyncio

import pytest

from models.errors import Overloaded
from replica.admission import Admission, QueueTimeout
from replica.config import ReplicaConfig
from replica.realtime import FRAME_S, RealtimePolicy, StepModel, StepTimes, budget_s, profile_sizes


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
    on its own engine before serving, up to the first size over the budget: whatever this
    machine's speed, the model then holds a prefix of those sizes, all of them unless the last
    one measured is over the budget."""
    assert profile_sizes(16) == [1, 2, 4, 8, 16] and profile_sizes(6) == [1, 2, 4, 6] and profile_sizes(1) == [1]
    replica = make_replica(config=ReplicaConfig(realtime_admission=True), max_num_seqs=6)
    periods = replica.step_times.model.periods
    sizes = [rows for rows, _ in periods]
    assert sizes == profile_sizes(6)[: len(sizes)] and sizes[0] == 1 and all(t > 0 for _, t in periods)
    if periods[-1][1] <= budget_s(0.2):
        assert sizes == [1, 2, 4, 6]
    assert replica.stats().engine.num_kv_slots_used == 0  # the profile's requests are gone


def test_step_times_learn_a_moving_average_per_batch_size():
    times = StepTimes(alpha=0.5)
    times.observe(2, 0.04)
    times.observe(2, 0.02)
    times.observe(1, 0.01)
    times.observe(0, 5.0)  # no rows: ignored
    assert times.model.periods == ((1, 0.01), (2, pytest.approx(0.03)))


def test_a_stale_estimate_falls_back_to_the_scaled_profile_so_the_replica_tries_that_size_again():
    now = [0.0]
    times = StepTimes(alpha=0.5, forget_s=30.0, clock=lambda: now[0])
    times.seed(((1, 0.03), (2, 0.04), (4, 0.05)))
    assert times.model.capacity(0.2, 4) == 4 and times.largest_recent() == 0  # idle: four rows keep real time
    times.observe(3, 0.09)  # a slow stretch at three rows: twice the idle 0.045 s
    assert times.model.periods == ((1, 0.06), (2, 0.08), (3, 0.09), (4, 0.10))  # every size scaled alike
    assert times.model.capacity(0.2, 4) == 1 and times.largest_recent() == 3
    now[0] = 29.0
    times.observe(2, 0.05)  # two rows run on: their estimate stays fresh
    now[0] = 31.0  # three rows have not run for over 30 s: the scale is two rows' (0.05 / 0.04)
    assert times.model.periods == (
        (1, pytest.approx(0.0375)), (2, 0.05), (4, pytest.approx(0.0625))) and times.model.capacity(0.2, 4) == 4
    assert times.largest_recent() == 2
    times.observe(3, 0.06)  # tried again: learned anew, not averaged with the old stretch
    assert dict(times.model.periods)[3] == 0.06


def test_streams_join_one_row_beyond_the_largest_batch_that_ran_lately():
    """Slow start: on the idle profile alone four rows fit, but a burst is let in one row at a
    time, each size seen running before the next joins."""
    times = StepTimes()
    times.seed(((1, 0.03), (2, 0.04), (4, 0.05)))
    policy = RealtimePolicy(times, rows=8, margin=0.2)
    assert policy.capacity() == 5  # 5 rows: 0.0625 s (beyond 4 rows: 0.0125 s a row)
    assert policy.admits(0) and not policy.admits(1)  # nothing ran yet: one stream
    times.observe(1, 0.03)
    assert policy.admits(1) and not policy.admits(2)
    times.observe(2, 0.04)
    assert policy.admits(2)
    assert not RealtimePolicy(times, rows=2, margin=0.2).admits(2)  # never beyond the rows


def _policy(periods, rows=8, enabled=True):
    times = StepTimes()
    times.seed(periods)
    times.largest_recent = lambda: rows  # every size has run (no slow start: tested above)
    return RealtimePolicy(times, rows, margin=0.2, enabled=enabled)


def test_policy_capacity_and_the_batch_rows_beside_interactive_ones():
    policy = _policy(((1, 0.03), (2, 0.06)))  # capacity 2
    assert policy.capacity() == 2
    assert policy.batch_rows(0) is None  # no interactive row: every batch row runs
    assert policy.batch_rows(1) == 1 and policy.batch_rows(2) == 0 and policy.batch_rows(3) == 0
    assert _policy(((1, 1.0),)).capacity() == 1  # a lone stream is always served
    assert _policy(((1, 1.0),), enabled=False).capacity() == 8


async def _hold(admission, priority="interactive", timeout_s=None, release: asyncio.Event | None = None,
                got: list | None = None):
    async with admission.row(priority, timeout_s) as row:
        if got is not None:
            got.append((priority, row))
        await (release or asyncio.Event()).wait()


def test_interactive_streams_are_admitted_up_to_the_capacity_then_wait_and_then_are_refused():
    async def main():
        admission = Admission(8, max_waiting=4, realtime=_policy(((1, 0.03), (2, 0.06))), wait_s=0.3)
        release, got = asyncio.Event(), []
        holders = [asyncio.create_task(_hold(admission, release=release, got=got)) for _ in range(2)]
        await asyncio.sleep(0.01)
        assert len(got) == 2 and admission.headroom() == 0 and admission.capacity() == 2
        with pytest.raises(Overloaded, match="within 0.3 s"):  # a free row, but no real-time headroom
            await _hold(admission)
        assert admission.num_waiting == 0 and admission.num_active == 2
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

    asyncio.run(main())


def test_a_requests_own_timeout_ends_its_wait_with_queue_timeout():
    async def main():
        admission = Admission(2, max_waiting=2, realtime=_policy(((1, 0.07),)), wait_s=30)
        holder = asyncio.create_task(_hold(admission))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueTimeout, match="Request timeout expired"):
            await _hold(admission, timeout_s=0.1)
        holder.cancel()
        await asyncio.gather(holder, return_exceptions=True)
        assert admission.num_active == 0 and admission.num_waiting == 0

    asyncio.run(main())


def test_batch_streams_need_only_a_row_within_their_share_and_interactive_waiters_go_first():
    async def main():
        admission = Admission(4, max_waiting=4, realtime=_policy(((1, 0.07),)), max_batch_rows=2, wait_s=5)
        release, got = asyncio.Event(), []
        tasks = [asyncio.create_task(_hold(admission, release=release, got=got))]  # capacity 1: at the bound
        tasks += [asyncio.create_task(_hold(admission, "batch", release=release, got=got)) for _ in range(2)]
        await asyncio.sleep(0.01)
        assert sorted(p for p, _ in got) == ["batch", "batch", "interactive"]  # batch ignores the real-time bound
        tasks.append(asyncio.create_task(_hold(admission, "batch", got=got)))  # over the batch share: waits
        tasks.append(asyncio.create_task(_hold(admission, got=got)))  # at the real-time bound: waits
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
        admission = Admission(2, max_waiting=0, realtime=_policy(((1, 0.07),)), wait_s=5)
        tasks = [asyncio.create_task(_hold(admission)) for _ in range(2)]  # 1 admitted, 1 waits on the free row
        await asyncio.sleep(0.01)
        assert admission.num_active == 1 and admission.num_waiting == 1
        with pytest.raises(Overloaded, match="busy"):  # no place left in the line: refused at once
            await _hold(admission)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert admission.num_active == 0 and admission.num_waiting == 0

    asyncio.run(main())
