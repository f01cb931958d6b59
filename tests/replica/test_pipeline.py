"""The replica's speech pipeline: admission (rows = slots, a bounded wait line), batched Mimi
decodes, the audio cap stopping the engine itself. The long-text seams are tested end to end
in test_long_text.py."""

import asyncio

import numpy as np
import pytest
import torch

from contract.playback import PlaybackClock
from models import GenerationParams, Overloaded
from replica.config import ReplicaConfig
from replica.pipeline import chunk_frames, next_chunk_frames
from tests.replica.conftest import job


def test_streams_beyond_the_rows_are_refused_at_once_or_wait_in_their_line(make_replica):
    """One row (= one KV slot), one place in the wait line. While the first stream has seconds
    of audio left, an interactive stream is refused at once (its Retry-After: the first one's
    frames left at the step period) rather than waiting; a batch stream waits for the row; a
    stream beyond the line is refused at once. When the row frees, the batch stream gets it."""
    replica = make_replica(max_waiting=1, max_num_seqs=1)
    pipeline = replica.pipeline

    async def run():
        first = pipeline.stream(job("a", ["Hello there."], GenerationParams(max_frames=50)))
        await anext(first)
        with pytest.raises(Overloaded) as refused:
            await anext(pipeline.stream(job("b", ["Hi."])))
        assert refused.value.retry_after_s > 1.0  # ~49 frames left, at 80 ms a step without a profile
        second = asyncio.ensure_future(anext(pipeline.stream(job("c", ["Hi."], GenerationParams(max_frames=2),
                                                                 priority="batch"))))
        await asyncio.sleep(0.05)
        assert not second.done() and replica.stats().num_waiting_streams == 1
        with pytest.raises(Overloaded):  # the line is full
            await anext(pipeline.stream(job("d", ["Hi."], priority="batch")))
        await first.aclose()  # frees the row: the waiting stream gets it
        return await second

    assert len(asyncio.run(run())) == 1920  # its first chunk: one frame
    stats = replica.stats()
    assert stats.num_streams == 0 and stats.num_waiting_streams == 0


def test_chunk_duration_maps_to_frames():
    assert [chunk_frames(s) for s in (0.01, 0.1, 0.24, 0.4)] == [1, 1, 3, 5]


def test_first_chunk_is_one_frame_then_chunks_grow_with_the_audio_out(make_replica, tiny):
    """First audio after one frame; then 1 + 0.2 x frames out (margin 0.2) up to 4 frames
    (chunk_s 0.32 s), the text's rest at its end; the next text goes on from the frames out
    so far; the PCM is still the whole Mimi decode of the frames."""
    replica = make_replica(config=ReplicaConfig(chunk_s=0.32, realtime_admission=False, realtime_margin=0.2))
    frames = []

    async def run():
        return [c async for c in replica.pipeline.stream(
            job("schedule", ["First part.", "Second part."], GenerationParams(seed=4, max_frames=12)),
            on_segment_done=lambda _, seg: frames.extend(seg.codes))]

    chunks = asyncio.run(run())
    assert [len(c) // 1920 for c in chunks] == [1, 1, 1, 1, 1, 2, 2, 2, 1, 3, 4, 4, 1]
    with torch.no_grad():
        whole = tiny.model.codec_model.decode(torch.tensor(frames).T[None]).audio_values[0, 0].numpy()
    np.testing.assert_allclose(np.concatenate(chunks), whole, atol=1e-4)


def _underruns(lead: float, cap: int, period_s: float, num_frames: int, schedule=next_chunk_frames) -> int:
    """A stream whose frames come one per step period (the first at 0) and leave in chunks as
    the schedule says, heard by a listener with no buffer of its own."""
    clock, out, pending, chunk = PlaybackClock(), 0, 0, 1
    for k in range(num_frames):
        pending += 1
        if pending >= chunk or k == num_frames - 1:
            clock.delivered(k * period_s, pending * 1920)
            out, pending = out + pending, 0
            chunk = schedule(out, lead, cap)
    return clock.summary().underruns


@pytest.mark.parametrize("lead", [0.0, 0.05, 0.2, 0.5, 1.0])
@pytest.mark.parametrize("cap", [1, 2, 3, 8])
def test_chunks_never_outgrow_a_listeners_buffer_at_the_admitted_step_time(lead, cap):
    """At the slowest step real-time admission keeps (80 ms / (1 + margin), less a hair for
    float rounding) no chunk seam leaves a bufferless listener dry; doubling chunks did at
    the second chunk as soon as a step took more than 40 ms."""
    period = 0.08 / (1 + lead) * (1 - 1e-9)
    assert _underruns(lead, cap, period, 300) == 0
    if cap > 1:
        assert _underruns(lead, cap, 0.05, 300, schedule=lambda out, _, cap_: min(out + 1, cap_)) > 0  # 1, 2, 4, ...: doubling
    assert [next_chunk_frames(n, 0.2, 3) for n in (0, 1, 4, 5, 9, 10, 11, 100)] == [1, 1, 1, 2, 2, 3, 3, 3]


def test_concurrent_streams_share_batched_mimi_decodes(make_replica, tiny):
    """Six streams on four decoder rows (rows are reused): chunks due at the same time are
    decoded in one batched call, and every stream's PCM still equals a whole Mimi decode of
    its own frames."""
    replica = make_replica(max_num_seqs=4)
    pipeline, frames_of = replica.pipeline, {}

    async def one(i, after=None):
        if after is not None:
            await after  # takes the decoder row that stream frees
        spoken = frames_of.setdefault(i, [])
        return [c async for c in pipeline.stream(job(f"s{i}", ["First part.", "Second part."],
                                                     GenerationParams(seed=i, max_frames=5)),
                                                 on_segment_done=lambda _, seg: spoken.extend(seg.codes))]

    async def run():
        first = [asyncio.create_task(one(i)) for i in range(4)]
        return await asyncio.gather(*first, one(4, first[0]), one(5, first[1]))

    outputs = asyncio.run(run())
    num_chunks = sum(len(chunks) for chunks in outputs)
    # 5 frames a text: chunks of 1, 1, 1, 1, 1 (growing with the audio out), then 2, 2, 1; a first
    # chunk may hold a second frame while other streams join (replica/joins.py)
    assert 6 * 7 <= num_chunks <= 6 * 8 and pipeline.decoder.num_decode_calls < num_chunks
    for i, chunks in enumerate(outputs):
        with torch.no_grad():
            whole = tiny.model.codec_model.decode(torch.tensor(frames_of[i]).T[None]).audio_values[0, 0].numpy()
        np.testing.assert_allclose(np.concatenate(chunks), whole, atol=1e-4)


@pytest.mark.parametrize("max_audio_s", [0.1, 0.24, 0.5])
def test_the_audio_cap_stops_the_engine_at_the_exact_sample(make_replica, max_audio_s):
    """A capped stream is cut to the exact sample, across texts, and the engine stops itself
    there (reason `length`), instead of the edge aborting a request that runs on: no request
    is counted as aborted, and later texts are never started."""
    replica = make_replica(config=ReplicaConfig(chunk_s=0.08, realtime_admission=False))

    async def run():
        return [c async for c in replica.pipeline.stream(job("capped", ["One.", "Two.", "Three."],
                                                             GenerationParams(seed=1), max_audio_s=max_audio_s))]

    pcm = np.concatenate(asyncio.run(run()))
    assert len(pcm) == round(max_audio_s * 24_000)
    finished = dict(replica.stats().engine.num_finished)
    assert finished["abort"] == 0 and finished["length"] == 1 and finished["eos"] == 0
    assert replica.stats().engine.num_frames_total == -(-round(max_audio_s * 24_000) // 1920)


def test_the_cap_carries_over_to_the_next_text(make_replica):
    """Texts of 2 frames each under a cap of 5 frames: 2 + 2 + 1, the third ended by the cap."""
    replica = make_replica()
    spoken = []

    async def run():
        return [c async for c in replica.pipeline.stream(
            job("carry", ["One.", "Two.", "Three.", "Four."], GenerationParams(seed=2, max_frames=2),
                max_audio_s=5 * 0.08), on_segment_done=lambda i, seg: spoken.append(len(seg.codes)))]

    assert sum(map(len, asyncio.run(run()))) == 5 * 1920
    assert spoken == [2, 2, 1]
    assert dict(replica.stats().engine.num_finished)["abort"] == 0
