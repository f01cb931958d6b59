"""SpeechPipeline: admission (rows = slots, a bounded wait line), voices, batched Mimi decodes.
The long-text seams are tested end to end in tests/deployments/test_long_text.py."""

import asyncio

import numpy as np
import pytest
import torch

from models import GenerationParams, Overloaded
from models.codec.encode import encode_clip
from models.frontend.speech import SpeechPipeline


@pytest.fixture
def pipeline(make_engine):
    pipeline = SpeechPipeline.start(make_engine(max_num_seqs=2), chunk_frames=2)
    yield pipeline
    pipeline.shutdown()


@pytest.fixture
def codec(tiny):
    return tiny.model.codec_model


def test_streams_beyond_the_rows_wait_then_are_refused(make_engine):
    """One row (= one KV slot), one place in the wait line: the second stream waits for the
    first to end, a third is refused with Overloaded before any audio."""
    pipeline = SpeechPipeline.start(make_engine(max_num_seqs=1), max_waiting=1)

    async def run():
        first = pipeline.stream("a", ["Hello there."], params=GenerationParams(max_frames=50))
        await anext(first)
        second = asyncio.ensure_future(anext(pipeline.stream("b", ["Hi."], params=GenerationParams(max_frames=2))))
        await asyncio.sleep(0.05)
        assert not second.done() and pipeline.admission.num_waiting == 1
        with pytest.raises(Overloaded):
            await anext(pipeline.stream("c", ["Hi."]))
        await first.aclose()  # frees the row: the waiting stream gets it
        chunk = await second
        return chunk

    try:
        assert len(asyncio.run(run())) == 2 * 1920
        assert pipeline.admission.num_active == 0 and pipeline.admission.num_waiting == 0
    finally:
        pipeline.shutdown()


def test_add_voice_encodes_once_and_caches_its_prefix(pipeline, codec):
    pcm = (0.2 * np.sin(np.arange(30_000) / 7)).astype(np.float32)

    async def run():
        context = await pipeline.voices.add("v1", 2, [(pcm, "Reference words.")])
        chunks = [c async for c in pipeline.stream("a", ["One.", "Two."], context, GenerationParams(speaker=2, max_frames=2))]
        return context, chunks

    context, chunks = asyncio.run(run())
    assert pipeline.voices.get("v1") == context and context[0].codes == encode_clip(codec, pcm)
    assert len(context[0].codes) == 16 and all(len(f) == 32 for f in context[0].codes)  # 1.25 s: ceil(15.6)
    stats = pipeline.engine.stats()
    assert stats.num_prefixes == 1 and stats.num_prefix_hits == 2  # both segments start from the voice's KV
    assert sum(map(len, chunks)) == 4 * 1920


def test_chunk_duration_maps_to_frames():
    from models.frontend.speech import chunk_frames

    assert [chunk_frames(s) for s in (0.01, 0.1, 0.24, 0.4)] == [1, 1, 3, 5]


def test_remove_voice_drops_its_cached_prefix(pipeline):
    pcm = (0.2 * np.sin(np.arange(30_000) / 7)).astype(np.float32)

    async def run():
        await pipeline.voices.add("v1", 2, [(pcm, "Reference words.")])
        assert pipeline.engine.stats().num_prefixes == 1
        await pipeline.voices.remove("v1")
        await pipeline.voices.remove("unknown")  # ignored

    asyncio.run(run())
    assert "v1" not in pipeline.voices and pipeline.engine.stats().num_prefixes == 0


def test_voices_are_bounded_least_recently_used_first(pipeline):
    """Beyond max_voices the least recently used voice is forgotten with its prefix; using a
    voice (get) makes it recent."""
    pipeline.voices.max_voices = 2
    pcm = (0.2 * np.sin(np.arange(30_000) / 7)).astype(np.float32)

    async def run():
        for vid in ("v1", "v2"):
            await pipeline.voices.add(vid, 2, [(pcm, f"Reference words for {vid}.")])
        pipeline.voices.get("v1")  # v2 is now the least recently used
        await pipeline.voices.add("v3", 2, [(pcm, "Reference words for v3.")])

    asyncio.run(run())
    assert "v1" in pipeline.voices and "v3" in pipeline.voices and "v2" not in pipeline.voices
    assert len(pipeline.voices) == 2 and pipeline.engine.stats().num_prefixes == 2


def test_concurrent_streams_share_batched_mimi_decodes(make_engine, codec, monkeypatch):
    """Six streams on four decoder rows (rows are reused): chunks due at the same time are
    decoded in one batched call, and every stream's PCM still equals a whole Mimi decode of
    its own frames."""
    pipeline = SpeechPipeline.start(make_engine(max_num_seqs=4), chunk_frames=2)
    engine = pipeline.engine
    frames_of: dict[str, list] = {}
    real_generate = engine.generate

    async def recording_generate(rid, text, params, context):
        async for out in real_generate(rid, text, params, context):
            frames_of.setdefault(rid.split("/")[0], []).extend(out.frames)
            yield out

    monkeypatch.setattr(engine, "generate", recording_generate)

    async def one(i, after=None):
        if after is not None:
            await after  # takes the decoder row that stream frees
        return [c async for c in pipeline.stream(f"s{i}", ["First part.", "Second part."],
                                                 params=GenerationParams(seed=i, max_frames=5))]

    async def run():
        first = [asyncio.create_task(one(i)) for i in range(4)]
        return await asyncio.gather(*first, one(4, first[0]), one(5, first[1]))

    try:
        outputs = asyncio.run(run())
    finally:
        pipeline.shutdown()
    num_chunks = sum(len(chunks) for chunks in outputs)
    assert num_chunks == 6 * 2 * 3 and pipeline.decoder.num_decode_calls < num_chunks  # 5 frames: chunks of 2, 2, 1
    for i, chunks in enumerate(outputs):
        with torch.no_grad():
            whole = codec.decode(torch.tensor(frames_of[f"s{i}"]).clamp(max=2047).T[None]).audio_values[0, 0].numpy()
        np.testing.assert_allclose(np.concatenate(chunks), whole, atol=1e-4)
