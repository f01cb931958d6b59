"""End to end below HTTP: a 4096-character input, split by serve.text, spoken in one custom
voice loaded from the voice store, streamed seamlessly through the replica's pipeline: the
streamed PCM equals one whole Mimi decode of all its frames (no gap, click or repeat at any
seam), and text i runs with seed + i and the voice plus text i-1 as its context, starting
from the voice's computed prefix."""

import asyncio

import numpy as np
import torch

from models import GenerationParams
from serve.text import split_text
from tests.replica.conftest import job, make_voice

PARAGRAPH = (
    "Dr. Smith paid $3.50 for coffee at 9 a.m. on Jan. 5, e.g. a small one. "
    "The U.S. team scored 2.5 points more than expected! Was it luck... or skill? "
    "She said: \"We will see.\" Then everyone went home, tired but happy. "
)


def test_4096_characters_in_one_voice(make_replica, store, tiny):
    seen = []  # the engine's schedule, through its fault-injection seam: each text's first prefill chunk

    def record(scheduled):
        seen.extend(c.request for c in scheduled.prefills if c.start == c.request.num_cached)

    replica = make_replica(before_step=record)
    voice = make_voice(store, speaker=4)
    assert asyncio.run(replica.voices.load_all()) == 1
    text = (PARAGRAPH * 30)[:4096]
    texts = split_text(text)
    assert len(texts) >= 16 and all(len(s) <= 250 for s in texts)
    spoken = []

    async def run():
        prefix = await replica.voices.prefix(voice)
        chunks = [c async for c in replica.pipeline.stream(job("long", texts, GenerationParams(speaker=4, seed=7, max_frames=2)), prefix,
                                                           on_segment_done=lambda i, seg: spoken.append(seg))]
        return prefix, chunks

    prefix, chunks = asyncio.run(run())
    assert len(prefix.context) == 1 and len(prefix.context[0].codes) == 25  # 2 s of reference audio
    pcm = np.concatenate(chunks)
    frames = [f for seg in spoken for f in seg.codes]
    with torch.no_grad():
        whole = tiny.model.codec_model.decode(torch.tensor(frames).T[None]).audio_values[0, 0].numpy()
    assert len(frames) == 2 * len(texts) and pcm.shape == whole.shape
    np.testing.assert_allclose(pcm, whole, atol=1e-4)  # no gap, click or repeat at any seam
    stats = replica.stats()
    assert stats.engine.num_prefix_hits == len(texts)  # every text reused the voice's KV
    assert dict(stats.contexts.num_misses)["voice"] == 1  # computed once, at load_all
    assert [seg.text for seg in spoken] == texts
    for i, request in enumerate(seen):  # text i: seed + i, context = voice + text i-1
        assert request.params.seed == 7 + i and request.context[0] == prefix.context[0]
        assert request.num_cached == prefix.length
        if i:
            assert request.context[1] == spoken[i - 1]
    assert len(seen) == len(texts)
