"""Voice files: OpenAI names, custom voices from uploaded samples (decoded as the upload route
decodes them), validation."""

import io

import numpy as np
import pytest
import soundfile

from serve.audio import decode_audio
from stores.voices import OPENAI_VOICES, Voice, VoiceNotFound, VoiceStore


def _sample(seconds: float, rate: int = 44_100, fmt: str = "WAV", channels: int = 2) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.2 * np.sin(2 * np.pi * 200 * t)
    buf = io.BytesIO()
    soundfile.write(buf, np.stack([wave] * channels, axis=1), rate, format=fmt)
    return buf.getvalue()


def _create(store: VoiceStore, name: str, audio: bytes, transcript: str, speaker: int = 0) -> Voice:
    """What POST /v1/audio/voices does: check the name and transcript, decode, store."""
    store.check_new(name, transcript)
    return store.create(name, decode_audio(audio, store.max_sample_s + 1), transcript, speaker)


def test_openai_names_resolve_without_files(tmp_path):
    store = VoiceStore(tmp_path)
    for i, name in enumerate(OPENAI_VOICES):
        voice = store.resolve(name)
        assert voice.is_builtin and voice.speaker == i and voice.clips == ()
    with pytest.raises(VoiceNotFound, match="alloy"):
        store.resolve("nobody")


def test_custom_voice_round_trip(tmp_path):
    store = VoiceStore(tmp_path)
    voice = _create(store, "My Voice", _sample(2.0, fmt="FLAC"), "Hello, this is me.", speaker=1)
    assert voice.id.startswith("voice_") and voice.name == "My Voice" and voice.created_at > 0
    again = VoiceStore(tmp_path)  # persisted: a new store (a restarted replica) sees it
    assert again.resolve(voice.id) == voice == again.resolve("My Voice")
    pcm = again.load_clip(voice, voice.clips[0])
    assert pcm.dtype == np.float32 and abs(len(pcm) - 48_000) < 100  # 2 s at 24 kHz mono
    assert voice in again.list()
    again.delete(voice.id)
    with pytest.raises(VoiceNotFound):
        again.resolve(voice.id)


def test_configured_folder_overrides_an_openai_name(tmp_path):
    store = VoiceStore(tmp_path)
    _create(store, "alloy", _sample(1.5), "Configured alloy.")
    assert not store.resolve("alloy").is_builtin
    assert sum(v.name == "alloy" for v in store.list()) == 1


@pytest.mark.parametrize(
    "name, audio, transcript, match",
    [
        ("../etc", _sample(2), "x", "name"),
        ("a/b", _sample(2), "x", "name"),
        ("", _sample(2), "x", "name"),
        ("ok", _sample(0.5), "x", "1-30 s"),
        ("ok", _sample(31, rate=8000, channels=1), "x", "1-30 s"),
        ("ok", b"not audio at all", "x", "(?i)audio"),
        ("ok", _sample(2), "   ", "transcript"),
    ],
)
def test_bad_uploads_are_rejected(tmp_path, name, audio, transcript, match):
    store = VoiceStore(tmp_path)
    with pytest.raises(ValueError, match=match):
        _create(store, name, audio, transcript)
    assert [v for v in store.list() if not v.is_builtin] == []


def test_builtin_and_malformed_ids_cannot_be_deleted(tmp_path):
    store = VoiceStore(tmp_path)
    with pytest.raises(VoiceNotFound):
        store.delete("alloy")
    with pytest.raises(VoiceNotFound):
        store.delete("../../x")


def test_lookups_use_an_index_rebuilt_only_when_the_folder_changes(tmp_path, monkeypatch):
    """Resolving a voice does not rescan the manifests on every request; a voice created or
    deleted by another process (another ingress replica on the shared volume) shows up at once."""
    store, other = VoiceStore(tmp_path), VoiceStore(tmp_path)
    store.resolve("alloy")
    scans = []
    real_glob = type(tmp_path).glob
    monkeypatch.setattr(type(tmp_path), "glob", lambda self, pattern: scans.append(pattern) or real_glob(self, pattern))
    for _ in range(100):
        store.resolve("alloy")
    assert scans == []  # nothing changed: no rescan
    voice = _create(other, "Elsewhere", _sample(1.5), "Made through another replica.")
    assert store.resolve(voice.id) == voice and len(scans) == 1
    other.delete(voice.id)
    with pytest.raises(VoiceNotFound):
        store.resolve(voice.id)
    assert len(scans) == 3  # the deleting store's own first lookup, and this one's after the change
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # staging and deletion folders are gone
