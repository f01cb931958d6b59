"""End to end below HTTP: a 4096-character input, split by serve.text, spoken in one custom
voice loaded from the voice store, streamed seamlessly through the speech pipeline: the
streamed PCM equals one whole Mimi decode of all its frames (no gap, click or repeat at any
seam), and segment i runs with seed + i and the voice plus segment i-1 as its context."""

import asyncio
import io

import numpy as np
import soundfile
import torch

from deployments.voices import EngineVoices
from models import GenerationParams
from serve.text import split_text
from serve.voices import VoiceStore

PARAGRAPH = (
    "Dr. Smith paid $3.50 for coffee at 9 a.m. on Jan. 5, e.g. a small one. "
    "The U.S. team scored 2.5 points more than expected! Was it luck... or skill? "
    "She said: \"We will see.\" Then everyone went home, tired but happy. "
)


def _sample() -> bytes:
    t = np.arange(2 * 24_000) / 24_000
    buf = io.BytesIO()
    soundfile.write(buf, 0.3 * np.sin(2 * np.pi * 180 * t), 24_000, format="WAV")
    return buf.getvalue()


def test_4096_characters_in_one_voice(pipeline, tiny, tmp_path, monkeypatch):
    store = VoiceStore(tmp_path)
    voice = store.create("narrator", _sample(), "Hello, I am the narrator.", speaker=4)
    assert asyncio.run(EngineVoices(pipeline, store).load_all()) == 1
    context = pipeline.voices.get(voice.id)
    assert len(context) == 1 and len(context[0].codes) == 25  # 2 s of reference audio

    text = (PARAGRAPH * 30)[:4096]
    segments = split_text(text)
    assert len(segments) >= 16 and all(len(s) <= 250 for s in segments)
    frames, seen = [], []
    real_generate = pipeline.engine.generate

    async def recording_generate(rid, seg, params, context):
        seen.append((seg, params, context))
        async for out in real_generate(rid, seg, params, context):
            frames.extend(out.frames)
            yield out

    monkeypatch.setattr(pipeline.engine, "generate", recording_generate)

    async def run():
        return [c async for c in pipeline.stream("long", segments, context, GenerationParams(speaker=4, seed=7, max_frames=2))]

    pcm = np.concatenate(asyncio.run(run()))
    codec = tiny.model.codec_model
    with torch.no_grad():
        whole = codec.decode(torch.tensor(frames).clamp(max=2047).T[None]).audio_values[0, 0].numpy()
    assert len(frames) == 2 * len(segments) and pcm.shape == whole.shape
    np.testing.assert_allclose(pcm, whole, atol=1e-4)  # no gap, click or repeat at any seam
    assert pipeline.engine.stats().num_prefix_hits == len(segments)  # every segment reused the voice KV
    for i, (seg, params, ctx) in enumerate(seen):  # segment i: seed + i, context = voice + segment i-1
        assert seg == segments[i] and params.seed == 7 + i and ctx[0] == context[0]
        if i:
            assert ctx[1].text == segments[i - 1] and len(ctx[1].codes) == 2
