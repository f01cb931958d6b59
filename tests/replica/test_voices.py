"""Voices on a replica: a voice's clips are encoded and its prefix computed once, cached in the
context cache under its id and version; the replica follows the shared voice store (a voice
deleted through another replica's store is forgotten, a voice replaced under the same id is
computed again instead of served stale, and the background task does it without a request);
concurrent first uses compute it once; the cache's byte budget bounds the voices kept."""

import asyncio
import shutil

import pytest

from models import GenerationParams, RequestError
from models.codec.encode import encode_clip
from replica.config import ReplicaConfig
from stores.voices import MANIFEST, Voice, VoiceStore
from tests.replica.conftest import job, make_voice


def test_a_voice_is_encoded_once_and_its_prefix_reused(make_replica, store, tiny):
    replica = make_replica()
    voice = make_voice(store, seconds=1.25, speaker=2)

    async def run():
        prefix = await replica.voices.prefix(voice)
        again = await replica.voices.prefix(store.resolve(voice.id))
        chunks = [c async for c in replica.pipeline.stream(job("a", ["One.", "Two."], GenerationParams(speaker=2, max_frames=2)),
                                                           prefix)]
        return prefix, again, chunks

    prefix, again, chunks = asyncio.run(run())
    assert again is prefix
    codes = prefix.context[0].codes
    assert codes == encode_clip(tiny.model.codec_model, store.load_clip(voice, voice.clips[0]))
    assert len(codes) == 16 and all(len(f) == 32 for f in codes)  # 1.25 s: ceil(15.6)
    stats = replica.stats()
    assert stats.voices == (voice.id,) and stats.contexts.num_entries == 1
    assert stats.contexts.num_bytes == prefix.num_bytes > 0
    assert dict(stats.contexts.num_misses)["voice"] == 1 and dict(stats.contexts.num_hits)["voice"] == 1
    assert stats.engine.num_prefix_hits == 2  # both texts start from the voice's KV
    assert sum(map(len, chunks)) == 4 * 1920


def test_builtin_voices_have_no_context(make_replica, store):
    replica = make_replica()
    assert asyncio.run(replica.voices.prefix(store.resolve("alloy"))) is None
    assert replica.stats().contexts.num_entries == 0


def test_concurrent_first_uses_compute_the_prefix_once(make_replica, store):
    replica = make_replica()
    voice = make_voice(store)

    async def run():
        return await asyncio.gather(*(replica.voices.prefix(voice) for _ in range(5)))

    prefixes = asyncio.run(run())
    assert all(p is prefixes[0] for p in prefixes)
    assert dict(replica.stats().contexts.num_misses)["voice"] == 5 and replica.stats().contexts.num_entries == 1
    assert replica.stats().engine.num_prefix_hits == 0  # no request ran; one prefill in the scratch slot


def test_a_voice_the_model_cannot_take_is_refused(make_replica, store):
    replica = make_replica(max_seq_len=64, max_frames_cap=32)
    voice = make_voice(store, seconds=3.0)  # 38 frames + text: more than 64 positions
    with pytest.raises(RequestError, match="max_seq_len 64"):
        asyncio.run(replica.voices.prefix(voice))
    assert replica.stats().contexts.num_entries == 0


def test_the_byte_budget_bounds_the_voices_kept(make_replica, store):
    """A budget that holds two of these voices: the least recently used goes, and comes back
    computed again on its next use."""
    probe = make_replica()
    one = asyncio.run(probe.voices.prefix(make_voice(store, "probe")))
    replica = make_replica(config=ReplicaConfig(chunk_s=0.16, context_cache_bytes=2 * one.num_bytes + 1, realtime_admission=False))
    voices = [make_voice(store, f"v{i}") for i in range(3)]

    async def run():
        for voice in voices[:2]:
            await replica.voices.prefix(voice)
        await replica.voices.prefix(voices[0])  # v1 is now the least recently used
        await replica.voices.prefix(voices[2])

    asyncio.run(run())
    stats = replica.stats()
    assert sorted(stats.voices) == sorted([voices[0].id, voices[2].id]) and stats.contexts.num_evictions == 1
    assert stats.contexts.num_bytes <= stats.contexts.max_bytes


def test_a_delete_elsewhere_is_forgotten_here(make_replica, store, tmp_path):
    here, elsewhere = store, VoiceStore(tmp_path)  # two replicas' stores, one folder
    replica = make_replica()

    async def run():
        kept, gone = make_voice(elsewhere, "kept"), make_voice(elsewhere, "gone")
        for voice in (here.resolve(kept.id), here.resolve(gone.id)):  # created elsewhere, loaded on use
            assert len((await replica.voices.prefix(voice)).context) == 1
        assert sorted(replica.stats().voices) == sorted([kept.id, gone.id])
        assert await replica.voices.sync() == []  # nothing changed: nothing forgotten
        elsewhere.delete(gone.id)
        assert await replica.voices.sync() == [gone.id]
        assert replica.stats().voices == (kept.id,) and replica.stats().contexts.num_entries == 1

    asyncio.run(run())


def test_a_replaced_voice_is_computed_again(make_replica, store, tmp_path):
    replica = make_replica()

    async def run():
        old = make_voice(store, transcript="The first take.")
        assert (await replica.voices.prefix(old)).context[0].text == "The first take."
        # the operator replaces the folder: same id, new transcript
        staging = tmp_path / ".replacement"
        shutil.copytree(tmp_path / old.id, staging)
        new = Voice.model_validate({**old.model_dump(), "clips": [{"audio": "sample.flac", "transcript": "Take two."}]})
        (staging / MANIFEST).write_text(new.model_dump_json())
        shutil.rmtree(tmp_path / old.id)
        staging.rename(tmp_path / old.id)
        assert store.resolve(old.id) == new and new.version != old.version
        assert (await replica.voices.prefix(new)).context[0].text == "Take two."  # not the cached first take
        assert await replica.voices.sync() == [] and replica.stats().voices == (old.id,)

    asyncio.run(run())


def test_the_background_task_follows_the_store(make_replica, store):
    replica = make_replica()

    async def run():
        voice = make_voice(store, "brief")
        await replica.voices.prefix(voice)
        task = asyncio.create_task(replica.follow_stores(interval_s=0.05))
        try:
            store.delete(voice.id)
            for _ in range(100):
                if not replica.stats().voices:
                    break
                await asyncio.sleep(0.02)
            assert replica.stats().voices == () and replica.stats().contexts.num_bytes == 0
        finally:
            task.cancel()

    asyncio.run(run())

