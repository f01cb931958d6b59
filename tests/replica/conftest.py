"""A replica over the session's tiny model (no Ray, no HTTP) for the tests of the replica
package, with a voice store in a temporary folder."""

import io

import numpy as np
import pytest
import soundfile

from contract.job import SpeechJob
from models import GenerationParams
from replica.config import ReplicaConfig
from replica.replica import Replica
from stores.conversations import ConversationStore
from stores.voices import Voice, VoiceStore


@pytest.fixture
def store(tmp_path):
    return VoiceStore(tmp_path)


@pytest.fixture
def make_replica(make_engine, store):
    """make_replica(max_waiting=0, before_step=None, config=None, conversations=None, **engine
    overrides); every replica made is shut down after the test."""
    made = []

    def make(max_waiting: int = 0, before_step=None, config: ReplicaConfig | None = None,
             conversations: ConversationStore | None = None, **engine) -> Replica:
        replica = Replica(make_engine(before_step=before_step, **{"max_num_seqs": 2, **engine}), store,
                          config or ReplicaConfig(chunk_s=0.16, realtime_admission=False), max_waiting=max_waiting,
                          conversations=conversations)
        made.append(replica)
        return replica

    yield make
    for replica in made:
        replica.shutdown()


def sample_pcm(seconds: float = 2.0, hz: float = 180.0) -> np.ndarray:
    t = np.arange(int(seconds * 24_000)) / 24_000
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def sample_wav(seconds: float = 2.0) -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, sample_pcm(seconds), 24_000, format="WAV")
    return buf.getvalue()


def make_voice(store: VoiceStore, name: str = "narrator", transcript: str = "Hello, I am the narrator.",
               speaker: int = 4, seconds: float = 2.0) -> Voice:
    return store.create(name, sample_pcm(seconds), transcript, speaker)


def job(request_id: str, texts, params: GenerationParams | None = None, **fields) -> SpeechJob:
    """A job for the pipeline's tests: its context is passed beside it, so its voice is a built-in one."""
    return SpeechJob(request_id=request_id, texts=tuple(texts), voice=Voice(id="alloy", name="alloy", is_builtin=True),
                     params=params or GenerationParams(), **fields)
