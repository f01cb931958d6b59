"""Voices kept as files: one folder per voice with a `voice.json` manifest and its clips,
shared by every replica and ingress (a shared volume on k8s).

A voice is a CSM speaker id plus optional reference clips with transcripts (the model's
"context"). The 13 OpenAI voice names always resolve: to a folder of that name if the
operator configured one, else to a built-in voice that is only a speaker id (no clip).
A new voice's sample arrives decoded (24 kHz mono float32: the edge decodes uploads), is
checked (1-30 s) and stored as FLAC. No torch here: encoding clips to Mimi codes is the
replica's job (replica/voices.py).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
from pydantic import BaseModel, ConfigDict, Field

from models.params import SAMPLE_RATE_HZ as SAMPLE_RATE
from models.params import Speaker

OPENAI_VOICES = (
    "alloy", "ash", "ballad", "coral", "echo", "fable", "onyx",
    "nova", "sage", "shimmer", "verse", "marin", "cedar",
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")
_ID = re.compile(r"^voice_[0-9a-f]{16}$")
MANIFEST = "voice.json"
RESCAN_S = 5.0


@dataclass(frozen=True)
class _Index:
    mtime_ns: int
    scanned_at: float
    voices: list[tuple[Path, Voice]]


class VoiceError(ValueError):
    """An unusable voice name, sample or transcript (a client error); `param` names the field."""

    def __init__(self, param: str | None, message: str) -> None:
        super().__init__(f"{param}: {message}" if param else message)
        self.param, self.message = param, message


class VoiceNotFound(LookupError):
    pass


class VoiceClip(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    audio: str = Field(description="file name inside the voice's folder")
    transcript: str = Field(min_length=1, max_length=2000)


class Voice(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str
    name: str
    speaker: Speaker = 0
    created_at: int = 0
    clips: tuple[VoiceClip, ...] = ()
    is_builtin: bool = False

    @property
    def version(self) -> str:
        """Changes whenever the stored record does (a folder replaced under the same id)."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise VoiceError("name", "1-64 characters of letters, digits, space, '_', '-' or '.', starting with a letter or digit")
    return name


class VoiceStore:
    def __init__(self, voices_dir: str | Path | None, min_sample_s: float = 1.0, max_sample_s: float = 30.0) -> None:
        self.dir = Path(voices_dir) if voices_dir else None
        self.min_sample_s, self.max_sample_s = min_sample_s, max_sample_s
        self._index: _Index | None = None  # replaced whole, never mutated: safe across threads
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)

    def _stored(self) -> list[tuple[Path, Voice]]:
        """The stored voices, from an index rebuilt only when the folder changed (its mtime:
        a voice appears or goes by a rename or removal of its folder) or is older than
        RESCAN_S (for file systems with coarse or late mtimes, e.g. NFS); one stat otherwise."""
        if self.dir is None:
            return []
        mtime, now, index = self.dir.stat().st_mtime_ns, time.monotonic(), self._index
        if index is not None and index.mtime_ns == mtime and now - index.scanned_at < RESCAN_S:
            return index.voices
        found = []
        for manifest in sorted(self.dir.glob(f"*/{MANIFEST}")):
            if manifest.parent.name.startswith("."):  # a voice being written or deleted
                continue
            found.append((manifest.parent, Voice.model_validate_json(manifest.read_text())))
        self._index = _Index(mtime, now, found)
        return found

    def list(self) -> list[Voice]:
        """Configured and custom voices, then the OpenAI names not overridden by a folder."""
        stored = [v for _, v in self._stored()]
        names = {v.name for v in stored}
        builtin = [
            Voice(id=name, name=name, speaker=i, is_builtin=True)
            for i, name in enumerate(OPENAI_VOICES)
            if name not in names
        ]
        return stored + builtin

    def resolve(self, name_or_id: str) -> Voice:
        """A voice by id or name (OpenAI names included). Raises VoiceNotFound."""
        for voice in self.list():
            if name_or_id in (voice.id, voice.name):
                return voice
        raise VoiceNotFound(f"voice {name_or_id!r} not found; use one of {', '.join(OPENAI_VOICES)} or a custom voice id")

    def folder(self, voice: Voice) -> Path:
        for path, stored in self._stored():
            if stored.id == voice.id:
                return path
        raise VoiceNotFound(f"voice {voice.id!r} has no files")

    def load_clip(self, voice: Voice, clip: VoiceClip) -> np.ndarray:
        """A clip as float32 mono PCM at 24 kHz."""
        pcm, rate = soundfile.read(self.folder(voice) / Path(clip.audio).name, dtype="float32", always_2d=True)
        if rate != SAMPLE_RATE:
            raise VoiceError(None, f"clip {clip.audio!r} is {rate} Hz, expected {SAMPLE_RATE}")
        return pcm.mean(axis=1)

    def check_new(self, name: str, transcript: str) -> str:
        """Raise VoiceError unless a voice of this name and transcript can be created (before
        its sample is decoded); returns the transcript as it will be stored."""
        if self.dir is None:
            raise VoiceError(None, "custom voices are disabled: no voices directory is configured")
        _check_name(name)
        transcript = (transcript or "").strip()
        if not transcript or len(transcript) > 2000:
            raise VoiceError("transcript", "the words spoken in the sample are required (1-2000 characters)")
        return transcript

    def create(self, name: str, pcm: np.ndarray, transcript: str, speaker: int = 0) -> Voice:
        """Validate a sample (float32 mono PCM at 24 kHz) and persist it as a new custom voice."""
        transcript = self.check_new(name, transcript)
        seconds = len(pcm) / SAMPLE_RATE
        if not self.min_sample_s <= seconds <= self.max_sample_s:
            raise VoiceError("audio_sample", f"{seconds:.1f} s long, must be {self.min_sample_s:g}-{self.max_sample_s:g} s")
        voice = Voice(
            id=f"voice_{secrets.token_hex(8)}", name=name, speaker=speaker, created_at=int(time.time()),
            clips=(VoiceClip(audio="sample.flac", transcript=transcript),),
        )
        staging = self.dir / f".{voice.id}.partial"  # complete, then renamed: readers never see half a voice
        staging.mkdir()
        soundfile.write(staging / "sample.flac", pcm, SAMPLE_RATE)
        (staging / MANIFEST).write_text(voice.model_dump_json(indent=2))
        staging.rename(self.dir / voice.id)
        return voice

    def delete(self, voice_id: str) -> Voice:
        """Remove a custom voice. Built-in names and unknown ids raise."""
        if not isinstance(voice_id, str) or not _ID.match(voice_id):
            raise VoiceNotFound(f"custom voice {voice_id!r} not found")
        voice = self.resolve(voice_id)
        folder = self.folder(voice)
        gone = folder.with_name(f".{voice.id}.deleted")
        folder.rename(gone)  # one step out of the index, then the files
        shutil.rmtree(gone)
        return voice
