"""Engine behaviour: batching invariance, slots, FIFO, EOS/length, aborts, bad params."""

import pytest
import torch

from models import FinishReason, GenerationParams, RequestError, Segment
from tests.conftest import run_to_end

TEXT = "Batching must not change what a request says."


def _alone(make_engine, text, params, context=(), **cfg):
    engine = make_engine(**cfg)
    engine.add_request("x", text, params, context)
    return run_to_end(engine)["x"]


def test_same_seed_same_codes_alone_and_among_15_others(make_engine):
    """A seeded, sampled request gives identical codes alone and in a busy batch where 15
    others join before and after it and finish at different steps."""
    params = GenerationParams(seed=1234, temperature=0.9, top_k=50, max_frames=24)
    alone_frames, alone_reason = _alone(make_engine, TEXT, params)

    engine = make_engine(max_num_seqs=16, max_prefill_tokens=64)
    frames: list = []
    batch_sizes: list[int] = []

    def step():
        for out in engine.step():
            if out.request_id == "x":
                frames.extend(out.frames)
        batch_sizes.append(engine.stats().last_batch_size)

    for i in range(7):  # running before x arrives
        engine.add_request(f"early{i}", f"Early request {i}. " * (i + 1), GenerationParams(seed=i, max_frames=10 + 4 * i))
    for _ in range(3):
        step()
    engine.add_request("x", TEXT, params)
    step()
    for i in range(8):  # joining while x runs
        engine.add_request(f"late{i}", f"Late {i}.", GenerationParams(seed=100 + i, max_frames=3 + 4 * i, top_k=5 + i))
        step()
    results = run_to_end(engine)
    frames.extend(results["x"][0])
    assert results["x"][1] == alone_reason
    assert max(batch_sizes) >= 12 and len(set(batch_sizes)) > 3  # a busy, changing batch
    assert len(alone_frames) == 24
    assert frames == alone_frames


def test_seed_reproducible_and_seeds_differ(make_engine):
    a = _alone(make_engine, TEXT, GenerationParams(seed=5, max_frames=6))[0]
    b = _alone(make_engine, TEXT, GenerationParams(seed=5, max_frames=6))[0]
    c = _alone(make_engine, TEXT, GenerationParams(seed=6, max_frames=6))[0]
    assert a == b
    assert a != c


def test_chunked_prefill_gives_same_codes(make_engine):
    """A long voice prompt prefilled 16 positions per step equals one-shot prefill."""
    ctx = Segment(speaker=2, text="A long earlier turn " * 6, codes=tuple((i % 2048,) * 32 for i in range(40)))
    params = GenerationParams(seed=9, max_frames=8)
    whole = _alone(make_engine, TEXT, params, (ctx,), max_prefill_tokens=4096)
    chunked = _alone(make_engine, TEXT, params, (ctx,), max_prefill_tokens=16)
    assert whole == chunked


def test_max_frames_ends_with_length(make_engine):
    frames, reason = _alone(make_engine, TEXT, GenerationParams(max_frames=7, seed=1))
    assert reason.value == "length" and len(frames) == 7
    assert all(len(f) == 32 and all(0 <= c < 2051 for c in f) for f in frames)


def test_default_max_frames_derived_from_text_and_capped(make_engine):
    engine = make_engine(max_frames_cap=200)
    short = engine.prepare("a", "Hello there.")
    long = engine.prepare("b", "word " * 100)
    assert 38 < short.max_frames < 80
    assert long.max_frames == 200


def test_fifo_waiting_when_slots_run_out(make_engine):
    engine = make_engine(max_num_seqs=2)
    for i in range(4):
        engine.add_request(f"r{i}", TEXT, GenerationParams(seed=i, max_frames=3 + i))
    first = engine.step()
    stats = engine.stats()
    assert (stats.num_running, stats.num_waiting, stats.num_kv_slots_used) == (2, 2, 2)
    assert sorted(out.request_id for out in first) == ["r0", "r1"]  # the first two hold the slots
    order = []
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.is_finished:
                order.append(out.request_id)
    assert order == ["r0", "r1", "r2", "r3"]
    assert engine.stats().num_kv_slots_used == 0


def test_abort_frees_slot_for_waiting_request(make_engine):
    engine = make_engine(max_num_seqs=1)
    engine.add_request("a", TEXT, GenerationParams(max_frames=50))
    engine.add_request("b", TEXT, GenerationParams(max_frames=2))
    engine.step()
    assert engine.stats().num_waiting == 1
    engine.abort_request("a")
    outs = engine.step()
    aborted = [o for o in outs if o.request_id == "a"]
    assert aborted and aborted[0].is_finished and aborted[0].finish_reason.value == "abort"
    assert [o.request_id for o in outs if o.frames] == ["b"]  # b took the slot in the same step
    run_to_end(engine)
    assert engine.stats().num_kv_slots_used == 0 and not engine.has_unfinished_requests()
    engine.abort_request("a")  # unknown / finished ids are ignored


def test_abort_waiting_request(make_engine):
    engine = make_engine(max_num_seqs=1)
    engine.add_request("a", TEXT, GenerationParams(max_frames=2))
    engine.add_request("b", TEXT, GenerationParams(max_frames=2))
    engine.abort_request("b")
    results = run_to_end(engine)
    assert results["b"] == ([], results["b"][1]) and results["b"][1].value == "abort"
    assert len(results["a"][0]) == 2


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"max_frames": 0}, "max_frames"),
        ({"seed": -1}, "seed"),
        ({"speaker": -3}, "speaker"),
        ({"nucleus": 0.5}, "nucleus"),
    ],
)
def test_bad_params_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        GenerationParams(**kwargs)


def test_bad_codes_in_context():
    with pytest.raises(ValueError, match="codes"):
        Segment(text="x", codes=((1, 2, 3),))
    with pytest.raises(ValueError, match="codes"):
        Segment(text="x", codes=((4096,) * 32,))


def test_requests_that_cannot_fit_are_rejected(make_engine):
    engine = make_engine(max_seq_len=64, max_frames_cap=32)
    with pytest.raises(RequestError, match="positions, more than the model's max_seq_len 64") as e:
        engine.add_request("a", "x" * 100)
    assert e.value.param == "input"
    with pytest.raises(RequestError, match="max_frames") as e:
        engine.add_request("b", "hi", GenerationParams(max_frames=60))
    assert e.value.param == "max_frames"
    with pytest.raises(RequestError, match="non-empty") as e:
        engine.add_request("c", "   ")
    assert e.value.param == "input"
    engine.add_request("d", "hi", GenerationParams(max_frames=2))
    with pytest.raises(ValueError, match="request_id"):
        engine.add_request("d", "hi")
    assert engine.stats().num_waiting == 1


def test_stats_report_batch_and_steps(make_engine):
    engine = make_engine()
    for i in range(3):
        engine.add_request(f"r{i}", TEXT, GenerationParams(seed=i, max_frames=4))
    engine.step()
    s = engine.stats()
    assert s.last_batch_size == 3 and s.num_running == 3 and s.num_kv_slots_total == 4
    assert s.last_step_s > 0 and s.num_prompt_tokens_total > 0
    run_to_end(engine)
    assert engine.stats().num_frames_total == 12


def _voice():
    return (Segment(speaker=3, text="This is how I sound.", codes=tuple(((7 * i) % 2048,) * 32 for i in range(30))),)


def test_voice_prefix_reuse_gives_identical_codes(make_engine):
    """A request whose context starts with a computed prefix skips re-prefilling it, with the
    same codes; the engine keeps no reference to the prefix (its owner decides)."""
    params = GenerationParams(seed=21, max_frames=10)
    full = _alone(make_engine, TEXT, params, _voice())
    engine = make_engine(max_prefill_tokens=32)
    prefix = engine.compute_prefix(_voice())
    assert prefix.context == _voice() and prefix.length > 30 and prefix.num_bytes > 0
    engine.add_request("x", TEXT, params, _voice(), prefix)
    engine.add_request("y", TEXT, GenerationParams(seed=22, max_frames=3), _voice(), prefix)
    results = run_to_end(engine)
    assert results["x"] == full
    stats = engine.stats()
    assert stats.num_prefix_hits == 2 and stats.num_cached_tokens_total == 2 * prefix.length
    prompt = len(engine.prepare("q", TEXT, params, _voice()).prompt)
    assert stats.num_prompt_tokens_total == 2 * (prompt - prefix.length)  # the prefix was not prefilled again
    with pytest.raises(ValueError, match="prefix"):
        engine.prepare("z", TEXT, params, (), prefix)  # a context that does not start with it


def test_a_prefix_extended_from_a_base_equals_one_computed_whole(make_engine):
    """compute_prefix(context, base) prefills only what follows the base (a conversation's next
    turn), with the same KV and the same codes as computing the whole context."""
    turn = Segment(speaker=1, text="And this is my answer.", codes=tuple(((11 * i) % 2048,) * 32 for i in range(12)))
    context = (*_voice(), turn)
    engine = make_engine(max_prefill_tokens=32)
    base = engine.compute_prefix(_voice())
    extended, whole = engine.compute_prefix(context, base), engine.compute_prefix(context)
    assert extended.length == whole.length > base.length
    torch.testing.assert_close(extended.kv.keys, whole.kv.keys, rtol=1e-5, atol=1e-5)
    params = GenerationParams(seed=5, temperature=0.0, max_frames=8)
    engine.add_request("from-base", TEXT, params, context, extended)
    engine.add_request("whole", TEXT, params, context, whole)
    engine.add_request("none", TEXT, params, context)
    results = run_to_end(engine)
    assert results["from-base"] == results["whole"] == results["none"]
    with pytest.raises(ValueError, match="base"):
        engine.compute_prefix((turn,), base)


def test_prefixes_are_computed_on_the_loop_thread(make_engine):
    import asyncio

    from models import EngineLoop

    loop = EngineLoop(make_engine(), idle_wait_s=0.05)
    try:
        assert asyncio.run(loop.compute_prefix(_voice())).length > 30
        with pytest.raises(RequestError, match="context"):
            asyncio.run(loop.compute_prefix(()))
    finally:
        loop.shutdown()


def test_a_frame_cap_ends_a_request_with_length(make_engine):
    """The caller's audio budget (frame_cap) bounds the text-derived cap: the request ends
    there with reason length, not aborted."""
    engine = make_engine()
    engine.add_request("capped", TEXT, GenerationParams(seed=3), frame_cap=4)
    frames, reason = run_to_end(engine)["capped"]
    assert len(frames) == 4 and reason is FinishReason.LENGTH
    assert dict(engine.stats().num_finished)["length"] == 1 and dict(engine.stats().num_finished)["abort"] == 0


def test_warm_up_leaves_the_engine_idle(make_engine):
    engine = make_engine()
    engine.warm_up()
    stats = engine.stats()
    assert stats.num_frames_total == 2 and stats.num_kv_slots_used == 0 and not engine.has_unfinished_requests()


def test_a_paused_and_resumed_batch_request_says_the_same_as_alone(make_engine):
    """A batch-priority request paused between frames while interactive rows need the step
    (its slot and KV kept) resumes where it stopped: its codes equal the same request alone."""
    params = GenerationParams(seed=77, temperature=0.9, top_k=50, max_frames=20)
    alone_frames, _ = _alone(make_engine, TEXT, params)
    engine = make_engine()
    engine.set_batch_rows(lambda interactive: None if interactive == 0 else 0)  # no batch row beside interactive
    engine.add_prepared(engine.prepare("x", TEXT, params, priority="batch"))
    frames = []
    for _ in range(5):  # x runs alone
        for out in engine.step():
            frames.extend(out.frames)
    engine.add_request("i", "An interactive stream.", GenerationParams(seed=1, max_frames=8))
    paused = 0
    while "i" in engine.scheduler.requests:
        for out in engine.step():
            if out.request_id == "x":
                frames.extend(out.frames)
        paused += engine.stats().num_paused
    assert paused >= 8 and len(frames) == 5  # x waited the interactive stream out
    frames.extend(run_to_end(engine)["x"][0])
    assert frames == alone_frames


def test_the_step_period_is_timed_between_back_to_back_decode_steps(make_engine):
    engine = make_engine()
    engine.add_request("a", TEXT, GenerationParams(seed=1, max_frames=6))
    engine.step()  # a prefill step: no period measured from it
    engine.step()
    assert engine.stats().period_batch == 0
    engine.add_request("b", TEXT, GenerationParams(seed=2, max_frames=6))
    engine.step()  # the period of the decode-only step before (a alone), taken as this one starts
    stats = engine.stats()
    assert stats.period_batch == 1 and stats.period_s > 0


def test_the_startup_profile_times_each_batch_size_and_leaves_the_engine_as_it_was(make_engine):
    """Engine.profile_steps: one period per size, ascending, from real batches of that size;
    the fault-injection seam is off while it runs; it stops at the first size over the bound;
    afterwards the engine is idle and a request says what it says on a fresh engine."""
    calls = []
    engine = make_engine(max_num_seqs=4, before_step=lambda sched: calls.append(len(sched.decodes)))
    profile = engine.profile_steps([1, 2, 4])
    assert [rows for rows, _ in profile] == [1, 2, 4] and all(seconds > 0 for _, seconds in profile)
    assert not calls and not engine.has_unfinished_requests() and engine.stats().num_kv_slots_used == 0
    assert [rows for rows, _ in engine.profile_steps([1, 2, 4], stop_above_s=0.0)] == [1]  # 1 row is over 0 s
    params = GenerationParams(seed=5, max_frames=6)
    engine.add_request("after", TEXT, params)
    assert run_to_end(engine)["after"][0] == _alone(make_engine, TEXT, params)[0]
    assert calls  # the seam is back
