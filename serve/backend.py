"""What the edges need from whatever serves the model: the in-process `replica.Replica`, or
`deployments.replica.RayReplicas` in front of a Ray deployment of them. Typed both ways with
the records of replica/records.py: a SpeechJob in, float32 PCM chunks out, a ReplicaError
(carrying an ErrorInfo) on failure. No torch here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import numpy as np

from replica.records import Instances, SpeechJob
from replica.voice_store import Voice


class SpeechBackend(Protocol):
    async def is_ready(self) -> bool:
        """Model loaded, warmed up, and an engine answering."""

    def synthesize(self, job: SpeechJob) -> AsyncIterator[np.ndarray]:
        """Float32 24 kHz mono PCM chunks, at most job.max_audio_s long. Raises ReplicaError
        (before the first chunk for overload and unusable input); closing the iterator aborts
        the generation."""

    async def add_voice(self, voice: Voice) -> None:
        """Make a stored voice usable now (its clips encoded, its prompt computed);
        ReplicaError (invalid_request) when the model cannot take it."""

    async def forget_voice(self, voice_id: str) -> None:
        """Forget a deleted voice now (replicas also follow the store on their own)."""

    async def instances(self) -> Instances: ...
