"""What the edges need from whatever serves the model: the in-process `replica.Replica`, or
`deployments.replica.RayReplicas` in front of a Ray deployment of them. Typed both ways with
the records of contract/ (job.py, errors.py, stats.py): a SpeechJob in, float32 PCM chunks
out, a ReplicaError (carrying an ErrorInfo) on failure. No torch here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import numpy as np

from contract.errors import ErrorInfo
from contract.job import SpeechJob
from contract.stats import Instances
from contract.text_feed import PieceDone, TextFeed, TextFeedWriter
from models.params import Priority
from stores.voices import Voice


class TextFeedBoth(TextFeed, TextFeedWriter, Protocol):
    """One stream's feed: the job carries it (the replica reads), the edge writes to it."""


class SpeechBackend(Protocol):
    async def is_ready(self) -> bool:
        """Model loaded, warmed up, and an engine answering."""

    async def check_admission(self, priority: Priority) -> ErrorInfo | None:
        """Before a job is built (its voice resolved, its text split): None if a stream of
        `priority` may start now (or after the short wait admission allows), else the refusal
        (overloaded, with when to retry) to answer at once. `synthesize` still decides."""

    def synthesize(self, job: SpeechJob) -> AsyncIterator[np.ndarray | PieceDone]:
        """Float32 24 kHz mono PCM chunks, at most job.max_audio_s long (with a PieceDone
        after each text's audio when job.marks). Raises ReplicaError (before the first chunk
        for overload and unusable input); closing the iterator aborts the generation."""

    def open_feed(self) -> TextFeedBoth:
        """A feed for a job's texts that come later (job.feed), and the edge's writer of it."""

    async def add_voice(self, voice: Voice) -> None:
        """Make a stored voice usable now (its clips encoded, its prompt computed);
        ReplicaError (invalid_request) when the model cannot take it."""

    async def forget_voice(self, voice_id: str) -> None:
        """Forget a deleted voice now (replicas also follow the store on their own)."""

    async def forget_conversation(self, conversation_id: str) -> None:
        """Forget a deleted conversation's cached context now (replicas also follow the store)."""

    async def instances(self) -> Instances: ...
