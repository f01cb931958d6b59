"""Conversations kept as files, as voices are (voices.py): one folder per conversation,
shared by every replica and ingress (a shared volume on k8s), each change written whole and
renamed into place, so a reader on any node sees a conversation before or after a change,
never half of one.

A conversation is an ordered list of turns, optionally starting from a voice. A turn is a
speaker, its text, and its audio: a clip someone else spoke (stored as FLAC; a replica
encodes it to Mimi codes) or the codes of a turn the model generated (stored as int16 .npy).
Bounds (each a ConversationError naming it, a client error): at most `max_count`
conversations, at most `max_bytes` of turn files per conversation, and an idle expiry
(`idle_expiry_s` after its last change a conversation is gone, as if deleted). Turns on one
conversation are ordered: `turn()` holds its lock (a file created exclusively) while a turn
is being generated, and a second one gets TurnInProgress (a lock older than `stale_lock_s`
was left by a process that died, and is taken over). No torch here.

The API is serve/routes/conversations.py; a replica reads turns through
replica/conversations.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile
from pydantic import BaseModel, ConfigDict, Field

from models.params import SAMPLE_RATE_HZ, Speaker

_ID = re.compile(r"^conv_[0-9a-f]{16}$")
MANIFEST, LOCK = "conversation.json", ".turn.lock"


class ConversationError(ValueError):
    """A bound or an unusable turn (a client error); `param` names the field, `code` the bound."""

    def __init__(self, param: str | None, message: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.param, self.message, self.code = param, message, code


class ConversationNotFound(LookupError):
    pass


class TurnInProgress(RuntimeError):
    pass


class Turn(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    speaker: Speaker
    text: str = Field(min_length=1, max_length=4096)
    audio: str | None = Field(None, description="a supplied turn's clip, a file in the conversation's folder")
    codes: str | None = Field(None, description="a generated turn's Mimi codes [frames, 32], an int16 .npy file")


class Conversation(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str
    voice: str | None = None
    created_at: int
    updated_at: float
    turns: tuple[Turn, ...] = ()
    num_bytes: int = 0  # the turn files'


class ConversationStore:
    def __init__(self, root: str | Path | None, max_count: int = 1000, max_bytes: int = 16 * 2**20,
                 idle_expiry_s: float = 24 * 3600, stale_lock_s: float = 900, clock=time.time) -> None:
        """`stale_lock_s`: a turn lock older than this was left by a process that died (no turn
        runs that long: 600 s of audio is the cap)."""
        self.dir = Path(root) if root else None
        self.max_count, self.max_bytes, self.idle_expiry_s, self._clock = max_count, max_bytes, idle_expiry_s, clock
        self.stale_lock_s = stale_lock_s
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)

    def _folder(self, conversation_id: str) -> Path:
        if self.dir is None:
            raise ConversationError(None, "conversations are disabled: no conversations directory is configured")
        if not isinstance(conversation_id, str) or not _ID.match(conversation_id):
            raise ConversationNotFound(f"conversation {conversation_id!r} not found")
        return self.dir / conversation_id

    def _write(self, folder: Path, conversation: Conversation) -> None:
        staging = folder / f".{MANIFEST}.{secrets.token_hex(4)}"
        staging.write_text(conversation.model_dump_json(indent=2))
        os.replace(staging, folder / MANIFEST)  # atomic: readers see the old manifest or the new one

    def _ids(self) -> list[str]:
        return [p.name for p in self.dir.iterdir() if _ID.match(p.name)] if self.dir is not None else []

    def create(self, voice: str | None = None, conversation_id: str | None = None) -> Conversation:
        """A new conversation; `conversation_id` (a conversation id's shape) names it instead of a
        random id (the v2 protocol's sequences: sequence_id_to_conversation). ConversationError
        at the count bound or when that id exists."""
        if self.dir is None:
            raise ConversationError(None, "conversations are disabled: no conversations directory is configured")
        self.expire()
        if len(self._ids()) >= self.max_count:
            raise ConversationError(None, f"at most {self.max_count} conversations; delete one first",
                                    "conversation_limit")
        if conversation_id is not None and (not _ID.match(conversation_id) or (self.dir / conversation_id).exists()):
            raise ConversationError("conversation", f"conversation {conversation_id!r} exists or is not an id")
        now = self._clock()
        conversation = Conversation(id=conversation_id or f"conv_{secrets.token_hex(8)}", voice=voice,
                                    created_at=int(now), updated_at=now)
        staging = self.dir / f".{conversation.id}.partial"
        staging.mkdir()
        self._write(staging, conversation)
        staging.rename(self.dir / conversation.id)
        return conversation

    def count(self) -> int:
        """Conversations kept now (expired ones included until the next create or expire())."""
        return len(self._ids())

    def get(self, conversation_id: str) -> Conversation:
        """The conversation; ConversationNotFound if it never was, was deleted or expired."""
        folder = self._folder(conversation_id)
        try:
            conversation = Conversation.model_validate_json((folder / MANIFEST).read_text())
        except FileNotFoundError:
            raise ConversationNotFound(f"conversation {conversation_id!r} not found") from None
        if self._clock() - conversation.updated_at > self.idle_expiry_s:
            self._remove(folder)
            raise ConversationNotFound(f"conversation {conversation_id!r} expired")
        return conversation

    def delete(self, conversation_id: str) -> Conversation:
        conversation = self.get(conversation_id)
        self._remove(self._folder(conversation_id))
        return conversation

    def _remove(self, folder: Path) -> None:
        gone = folder.with_name(f".{folder.name}.deleted.{secrets.token_hex(4)}")
        with contextlib.suppress(FileNotFoundError):
            folder.rename(gone)  # one step out of sight, then the files
            shutil.rmtree(gone, ignore_errors=True)

    def expire(self) -> list[str]:
        """Remove every conversation idle past the expiry; returns their ids."""
        gone = []
        for conversation_id in self._ids():
            try:
                self.get(conversation_id)
            except ConversationNotFound:
                gone.append(conversation_id)
        return gone

    def add_audio_turn(self, conversation_id: str, speaker: int, text: str, pcm: np.ndarray) -> Conversation:
        """A turn someone else spoke: its audio (float32 mono, 24 kHz) and transcript."""
        text = (text or "").strip()
        if not text or len(text) > 4096:
            raise ConversationError("transcript", "the words spoken in the turn are required (1-4096 characters)")
        if len(pcm) == 0:
            raise ConversationError("audio", "the turn's audio has no samples")
        return self._add(conversation_id, speaker, text, "flac",
                         lambda path: soundfile.write(path, pcm, SAMPLE_RATE_HZ, format="FLAC"))

    def add_generated_turn(self, conversation_id: str, speaker: int, text: str, codes: np.ndarray) -> Conversation:
        """A turn the model spoke: its Mimi codes [frames, 32]."""
        codes = np.asarray(codes, dtype=np.int16)
        if codes.ndim != 2 or not len(codes):
            raise ConversationError("codes", "a generated turn needs at least one frame of codes")
        return self._add(conversation_id, speaker, text, "npy", lambda path: np.save(path, codes, allow_pickle=False))

    def _add(self, conversation_id: str, speaker: int, text: str, ext: str, write) -> Conversation:
        conversation, folder = self.get(conversation_id), self._folder(conversation_id)
        name = f"turn_{len(conversation.turns):04d}_{secrets.token_hex(4)}.{ext}"
        staging = folder / f".{name}"
        write(staging)
        size = staging.stat().st_size
        if conversation.num_bytes + size > self.max_bytes:
            staging.unlink()
            raise ConversationError("audio", f"the conversation would exceed {self.max_bytes} bytes of turns",
                                    "conversation_too_large")
        staging.rename(folder / name)
        turn = Turn(speaker=speaker, text=text, **({"audio": name} if ext == "flac" else {"codes": name}))
        updated = conversation.model_copy(update={"turns": (*conversation.turns, turn), "updated_at": self._clock(),
                                                  "num_bytes": conversation.num_bytes + size})
        self._write(folder, updated)
        return updated

    def load_audio(self, conversation_id: str, turn: Turn) -> np.ndarray:
        pcm, _ = soundfile.read(self._folder(conversation_id) / Path(turn.audio).name, dtype="float32", always_2d=True)
        return pcm.mean(axis=1)

    def load_codes(self, conversation_id: str, turn: Turn) -> np.ndarray:
        return np.load(self._folder(conversation_id) / Path(turn.codes).name, allow_pickle=False)

    @contextlib.contextmanager
    def turn(self, conversation_id: str) -> Iterator[Conversation]:
        """Hold the conversation's turn lock (TurnInProgress if another turn holds it); yields
        the conversation as it stands."""
        conversation, lock = self.get(conversation_id), self._folder(conversation_id) / LOCK
        with contextlib.suppress(FileNotFoundError):  # a lock left by a process that died mid-turn
            if time.time() - lock.stat().st_mtime > self.stale_lock_s:
                lock.unlink()
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            raise TurnInProgress(f"conversation {conversation_id!r} has a turn in progress; wait for it to end") from None
        os.close(fd)
        try:
            yield conversation
        finally:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()

