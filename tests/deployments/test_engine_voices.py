"""An engine's voices follow the shared voice store (its one owner): a voice deleted through
another replica's store is forgotten here with its cached prefix, a voice replaced under the
same id is loaded again instead of served from the stale cache, and the background task does it
without any request reaching this engine."""

import asyncio
import shutil

import pytest

from deployments.voices import EngineVoices
from models.frontend.speech import SpeechPipeline
from serve.voices import MANIFEST, Voice, VoiceStore
from tests.deployments.test_long_text import _sample


@pytest.fixture
def store(tmp_path):
    return VoiceStore(tmp_path)


def _prefixes(pipeline: SpeechPipeline) -> int:
    return pipeline.engine.stats().num_prefixes


def test_a_delete_elsewhere_is_forgotten_here(pipeline, tmp_path):
    here, elsewhere = VoiceStore(tmp_path), VoiceStore(tmp_path)  # two replicas' stores, one folder

    async def run():
        voices = EngineVoices(pipeline, here)
        kept = elsewhere.create("kept", _sample(), "I stay.")
        gone = elsewhere.create("gone", _sample(), "I go.")
        for voice in (here.resolve(kept.id), here.resolve(gone.id)):  # created elsewhere, loaded on use
            assert len(await voices.context(voice)) == 1
        assert sorted(voices.loaded) == sorted([kept.id, gone.id]) and _prefixes(pipeline) == 2
        assert await voices.sync() == []  # nothing changed: nothing forgotten
        elsewhere.delete(gone.id)
        assert await voices.sync() == [gone.id]
        assert voices.loaded == [kept.id] and _prefixes(pipeline) == 1 and gone.id not in pipeline.voices

    asyncio.run(run())


def test_a_replaced_voice_is_loaded_again(pipeline, store, tmp_path):
    async def run():
        voices = EngineVoices(pipeline, store)
        old = store.create("narrator", _sample(), "The first take.")
        assert (await voices.context(old))[0].text == "The first take."
        # the operator replaces the folder: same id, new transcript
        staging = tmp_path / ".replacement"
        shutil.copytree(tmp_path / old.id, staging)
        new = Voice.model_validate({**old.model_dump(), "clips": [{"audio": "sample.flac", "transcript": "Take two."}]})
        (staging / MANIFEST).write_text(new.model_dump_json())
        shutil.rmtree(tmp_path / old.id)
        staging.rename(tmp_path / old.id)
        assert store.resolve(old.id) == new
        assert (await voices.context(new))[0].text == "Take two."  # not the cached first take
        assert await voices.sync() == [] and voices.loaded == [old.id]

    asyncio.run(run())


def test_the_background_task_follows_the_store(pipeline, store):
    async def run():
        voices = EngineVoices(pipeline, store)
        voice = store.create("brief", _sample(), "Soon gone.")
        await voices.context(voice)
        task = asyncio.create_task(voices.follow_store(interval_s=0.05))
        try:
            store.delete(voice.id)
            for _ in range(100):
                if not voices.loaded:
                    break
                await asyncio.sleep(0.02)
            assert voices.loaded == [] and _prefixes(pipeline) == 0
        finally:
            task.cancel()

    asyncio.run(run())
