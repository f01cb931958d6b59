"""SpeechPipeline: long text in segments, one voice, seamless streamed PCM."""

import asyncio

import numpy as np
import pytest
import torch

from models import AsyncEngine, GenerationParams, Segment
from models.speech import NoStreamCapacity, SpeechPipeline, encode_clip

SENTENCE = "The pipeline keeps one voice across a long text, segment after segment. "


@pytest.fixture
def pipeline(make_engine):
    engine = AsyncEngine(make_engine(max_num_seqs=4), idle_wait_s=0.05)
    yield SpeechPipeline(engine, max_streams=2, chunk_frames=2)
    engine.shutdown()


def _voice(codec):
    t = np.arange(36_000) / 24_000
    pcm = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    codes = encode_clip(codec, pcm)
    assert len(codes) == 19 and all(len(f) == 32 for f in codes)  # 1.5 s -> ceil(18.75) frames
    return (Segment(speaker=1, text="A reference sentence.", codes=codes),)


def test_long_text_streams_seamlessly_in_one_voice(pipeline, monkeypatch):
    """16 segments (~4 KB of text): the streamed PCM equals one whole Mimi decode of all the
    frames, so the seams add no gap, click or repeated audio; each segment's context is the
    voice plus the previous segment."""
    codec = pipeline.engine.engine.loaded.model.codec_model
    voice = _voice(codec)
    segments = [SENTENCE * 3 + f"Part {i}." for i in range(16)]
    assert sum(map(len, segments)) > 3500
    seen = []
    real_generate = pipeline.engine.generate

    async def recording_generate(rid, text, params):
        frames = []
        async for out in real_generate(rid, text, params):
            frames += out.frames
            yield out
        seen.append((text, params, frames))

    monkeypatch.setattr(pipeline.engine, "generate", recording_generate)

    async def run():
        return [c async for c in pipeline.stream("long", segments, voice, GenerationParams(speaker=1, seed=4, max_frames=3))]

    chunks = asyncio.run(run())
    pcm = np.concatenate(chunks)
    all_frames = [f for _, _, frames in seen for f in frames]
    assert len(seen) == 16 and len(all_frames) == 48 and len(chunks) >= 16
    with torch.no_grad():
        whole = codec.decode(torch.tensor(all_frames).clamp(max=2047).T[None]).audio_values[0, 0].numpy()
    assert pcm.shape == whole.shape == (48 * 1920,)
    np.testing.assert_allclose(pcm, whole, atol=1e-4)
    for i, (text, params, _) in enumerate(seen):
        assert text == segments[i] and params.seed == 4 + i and params.context[0] == voice[0]
        if i:
            assert params.context[1].text == segments[i - 1] and len(params.context[1].codes) == 3


def test_stream_capacity_is_bounded(make_engine):
    engine = AsyncEngine(make_engine(), idle_wait_s=0.05)
    pipeline = SpeechPipeline(engine, max_streams=1)

    async def run():
        first = pipeline.stream("a", ["Hello there."], params=GenerationParams(max_frames=50))
        await first.__anext__()
        with pytest.raises(NoStreamCapacity):
            await pipeline.stream("b", ["Hi."]).__anext__()
        await first.aclose()
        # the row is free again
        return [c async for c in pipeline.stream("c", ["Hi."], params=GenerationParams(max_frames=2))]

    try:
        chunks = asyncio.run(run())
        assert sum(len(c) for c in chunks) == 2 * 1920
    finally:
        engine.shutdown()


def test_add_voice_encodes_once_and_caches_its_prefix(pipeline):
    codec = pipeline.engine.engine.loaded.model.codec_model
    pcm = (0.2 * np.sin(np.arange(30_000) / 7)).astype(np.float32)

    async def run():
        context = await pipeline.add_voice("v1", 2, [(pcm, "Reference words.")])
        chunks = [c async for c in pipeline.stream("a", ["One.", "Two."], context, GenerationParams(speaker=2, max_frames=2))]
        return context, chunks

    context, chunks = asyncio.run(run())
    assert pipeline.voices["v1"] == context and context[0].codes == encode_clip(codec, pcm)
    stats = pipeline.engine.stats()
    assert stats.num_prefixes == 1 and stats.num_prefix_hits == 2  # both segments start from the voice's KV
    assert sum(map(len, chunks)) == 4 * 1920


def test_chunk_duration_maps_to_frames():
    from models.speech import chunk_frames

    assert [chunk_frames(s) for s in (0.01, 0.1, 0.24, 0.4)] == [1, 1, 3, 5]


def test_remove_voice_drops_its_cached_prefix(pipeline):
    pcm = (0.2 * np.sin(np.arange(30_000) / 7)).astype(np.float32)

    async def run():
        await pipeline.add_voice("v1", 2, [(pcm, "Reference words.")])
        assert pipeline.engine.stats().num_prefixes == 1
        await pipeline.remove_voice("v1")
        await pipeline.remove_voice("unknown")  # ignored

    asyncio.run(run())
    assert "v1" not in pipeline.voices and pipeline.engine.stats().num_prefixes == 0


def test_concurrent_streams_share_batched_mimi_decodes(make_engine, monkeypatch):
    """Six streams on four decoder rows (rows are reused): chunks due at the same time are
    decoded in one batched call, and every stream's PCM still equals a whole Mimi decode of
    its own frames."""
    engine = AsyncEngine(make_engine(max_num_seqs=4), idle_wait_s=0.05)
    pipeline = SpeechPipeline(engine, max_streams=4, chunk_frames=2)
    frames_of: dict[str, list] = {}
    real_generate = engine.generate

    async def recording_generate(rid, text, params):
        async for out in real_generate(rid, text, params):
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
        engine.shutdown()
    codec = engine.engine.loaded.model.codec_model
    num_chunks = sum(len(chunks) for chunks in outputs)
    assert num_chunks == 6 * 2 * 3 and pipeline.num_decode_calls < num_chunks  # 5 frames: chunks of 2, 2, 1
    for i, chunks in enumerate(outputs):
        with torch.no_grad():
            whole = codec.decode(torch.tensor(frames_of[f"s{i}"]).clamp(max=2047).T[None]).audio_values[0, 0].numpy()
        np.testing.assert_allclose(np.concatenate(chunks), whole, atol=1e-4)
