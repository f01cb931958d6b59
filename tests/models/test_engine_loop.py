"""EngineLoop: streaming, concurrency, cancellation frees slots, failed steps end requests."""

import asyncio

import pytest

from models import EngineDeadError, EngineLoop, EngineStepError, GenerationParams, RequestError

TEXT = "Streaming frames as they come."


@pytest.fixture
def loop(make_engine):
    engine = EngineLoop(make_engine(max_num_seqs=4), idle_wait_s=0.05)
    yield engine
    engine.shutdown()


async def _collect(engine, rid, params):
    frames, last = [], None
    async for out in engine.generate(rid, TEXT, params):
        frames += out.frames
        last = out
    return frames, last


async def _wait_for(predicate, timeout_s=10.0):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_generate_streams_until_finished(loop):
    frames, last = asyncio.run(_collect(loop, "a", GenerationParams(seed=3, max_frames=6)))
    assert len(frames) == 6 and last.is_finished and last.finish_reason.value == "length"


def test_concurrent_requests_match_sync_engine(loop, make_engine):
    """Eight concurrent streams (more than the 4 slots) all finish with the codes the
    synchronous engine gives each of them alone."""

    async def main():
        return await asyncio.gather(
            *(_collect(loop, f"r{i}", GenerationParams(seed=i, max_frames=3 + i)) for i in range(8))
        )

    results = asyncio.run(main())
    for i, (frames, last) in enumerate(results):
        engine = make_engine()
        engine.add_request("x", TEXT, GenerationParams(seed=i, max_frames=3 + i))
        alone = []
        while engine.has_unfinished_requests():
            for out in engine.step():
                alone += out.frames
        assert frames == alone and last.is_finished
    assert loop.stats().num_kv_slots_used == 0


def test_cancelled_stream_frees_its_slot(loop):
    async def main():
        agen = loop.generate("long", TEXT, GenerationParams(max_frames=500))
        first = await agen.__anext__()
        assert first.frames
        assert loop.stats().num_kv_slots_used == 1
        await agen.aclose()  # what a disconnecting client's cancelled task does
        await _wait_for(lambda: loop.stats().num_kv_slots_used == 0)
        await _wait_for(lambda: loop.stats().num_running == loop.stats().num_waiting == 0)

    asyncio.run(main())


def test_cancelled_task_frees_its_slot(loop):
    async def main():
        task = asyncio.create_task(_collect(loop, "t", GenerationParams(max_frames=500)))
        await _wait_for(lambda: loop.stats().num_frames_total > 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await _wait_for(lambda: loop.stats().num_kv_slots_used == 0)

    asyncio.run(main())


def test_a_request_whose_event_loop_closed_is_aborted_and_the_engine_keeps_serving(loop):
    """A caller's event loop that closes with its stream open (a worker torn down mid-request)
    frees the slot; the engine thread lives on and serves the next caller."""
    event_loop = asyncio.new_event_loop()
    agen = loop.generate("orphan", TEXT, GenerationParams(max_frames=500))
    assert event_loop.run_until_complete(agen.__anext__()).frames
    event_loop.close()  # the generator is left open: nobody aborts it
    asyncio.run(_wait_for(lambda: loop.stats().num_kv_slots_used == 0))
    assert loop.is_alive
    frames, last = asyncio.run(_collect(loop, "next", GenerationParams(seed=1, max_frames=4)))
    assert len(frames) == 4 and last.is_finished


def test_bad_request_raises_before_queueing(loop):
    async def main():
        with pytest.raises(RequestError, match="non-empty"):
            async for _ in loop.generate("bad", "", None):
                pass

    asyncio.run(main())
    stats = loop.stats()
    assert stats.num_running == stats.num_waiting == 0


def test_failed_step_ends_requests_and_engine_keeps_serving(make_engine):
    calls = {"n": 0}

    def flaky(scheduled):  # the engine's fault-injection seam: the second step fails
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated device error")

    loop = EngineLoop(make_engine(before_step=flaky), idle_wait_s=0.05)

    async def main():
        with pytest.raises(EngineStepError, match="simulated device error"):
            await _collect(loop, "doomed", GenerationParams(max_frames=20))
        assert loop.stats().num_kv_slots_used == 0
        return await _collect(loop, "next", GenerationParams(max_frames=3))

    try:
        frames, last = asyncio.run(main())
        assert len(frames) == 3 and last.is_finished
        loop.check_health()
    finally:
        loop.shutdown()


def test_shutdown_fails_health_check(make_engine):
    engine = EngineLoop(make_engine())
    engine.check_health()
    engine.shutdown()
    with pytest.raises(RuntimeError, match="not running"):
        engine.check_health()


def test_requests_sent_as_the_loop_stops_are_answered_not_left_waiting(make_engine):
    """A request whose command reaches the inbox after the loop thread stopped gets
    EngineDeadError instead of waiting forever."""
    engine = EngineLoop(make_engine(), idle_wait_s=0.05)
    engine.shutdown()

    async def main():
        engine.check_health = lambda: None  # as if it passed a moment before the loop stopped
        with pytest.raises(EngineDeadError):
            await asyncio.wait_for(_collect(engine, "late", GenerationParams(max_frames=2)), timeout=5)
        with pytest.raises(EngineDeadError):
            await asyncio.wait_for(engine.compute_prefix(()), timeout=5)

    asyncio.run(main())


def test_a_prefix_given_up_while_queued_does_not_stop_the_loop(loop):
    """A caller that stops waiting for a prefix (its task cancelled, e.g. its event loop
    closed) while the command waits in the inbox: the loop skips it and keeps serving."""
    import threading

    from models import Segment

    release = threading.Event()
    held = loop.call(lambda engine: release.wait(10))  # the loop's thread is busy until released

    async def run():
        task = asyncio.ensure_future(loop.compute_prefix((Segment(text="Given up."),)))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.wrap_future(held)
        prefix = await loop.compute_prefix((Segment(text="Still served."),))
        frames, last = await _collect(loop, "after", GenerationParams(seed=1, max_frames=2))
        return prefix, frames, last

    prefix, frames, last = asyncio.run(run())
    assert loop.is_alive and prefix.length > 0 and len(frames) == 2 and last.is_finished
