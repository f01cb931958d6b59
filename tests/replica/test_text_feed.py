"""Texts that arrive while a stream speaks (contract/text_feed.py, the text-in WebSocket's
seam): fed one by one, later, they give the same audio as the same texts given at once, on
one decoder row, with a mark after each text's audio; clearing drops only what has not
started; closing the stream mid-wait frees its row."""

import asyncio

import numpy as np
import pytest

from contract.text_feed import PieceDone, QueueFeed
from models import GenerationParams
from models.params import SAMPLE_RATE_HZ
from tests.replica.conftest import job

TEXTS = ("The first piece of the reply.", "Then a second one, a bit longer.", "And the end.")
PARAMS = GenerationParams(seed=3, temperature=0.0, max_frames=4)


async def _collect(stream):
    pcm, marks = [], []
    async for item in stream:
        (marks if isinstance(item, PieceDone) else pcm).append(item)
    return np.concatenate(pcm), marks


def test_texts_fed_later_give_the_audio_of_texts_given_at_once(make_replica):
    replica = make_replica()

    async def run():
        whole, _ = await _collect(replica.pipeline.stream(job("whole", TEXTS, PARAMS)))
        feed = QueueFeed()

        async def write():
            for text in TEXTS[1:]:
                await asyncio.sleep(0.3)  # the client is slower than the speech: the stream waits
                await feed.put(text)
            await feed.close()

        writer = asyncio.create_task(write())
        fed, marks = await _collect(replica.pipeline.stream(job("fed", TEXTS[:1], PARAMS, feed=feed, marks=True)))
        await writer
        return whole, fed, marks

    whole, fed, marks = asyncio.run(run())
    # same seeds (seed + i), same context, one Mimi row; chunked where each listener's slack said (float rounding)
    np.testing.assert_allclose(fed, whole, rtol=1e-5, atol=1e-4)
    assert [m.text for m in marks] == list(TEXTS) and [m.index for m in marks] == [0, 1, 2]
    frame_s = 4 * 1920 / SAMPLE_RATE_HZ
    assert [(m.start_s, m.end_s) for m in marks] == [pytest.approx((i * frame_s, (i + 1) * frame_s)) for i in range(3)]


def test_clear_drops_queued_texts_and_a_closed_stream_frees_its_row(make_replica):
    replica = make_replica()

    async def run():
        feed = QueueFeed()
        await feed.put("Queued and then dropped.")
        await feed.put("This one too.")
        assert await feed.clear() == 2
        await feed.close()
        _, marks = await _collect(replica.pipeline.stream(job("cleared", TEXTS[:1], PARAMS, feed=feed, marks=True)))
        assert [m.text for m in marks] == [TEXTS[0]]
        waiting = QueueFeed()  # never closed: the stream waits for text until its consumer leaves
        stream = replica.pipeline.stream(job("left", TEXTS[:1], PARAMS, feed=waiting, marks=True))
        items = [await anext(stream) for _ in range(3)]
        assert replica.stats().num_streams == 1 and items
        await asyncio.sleep(0.3)
        await stream.aclose()
        return replica.stats().num_streams

    assert asyncio.run(run()) == 0
