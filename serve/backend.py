"""What the HTTP edge needs from whatever runs the model: in-process (deployments.local) or
a Ray Serve engine deployment behind a handle. PCM in, nothing of torch out here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .voices import Voice


class Overloaded(Exception):
    """No capacity now (slots and queue full): the client should retry (429 + Retry-After)."""


@dataclass(frozen=True)
class SynthesisParams:
    speaker: int
    seed: int | None = None
    temperature: float | None = None
    top_k: int | None = None


class SpeechBackend(Protocol):
    async def is_ready(self) -> bool:
        """Model loaded, warmed up, and the engine answering."""

    def synthesize(
        self, request_id: str, segments: list[str], voice: Voice, params: SynthesisParams
    ) -> AsyncIterator[np.ndarray]:
        """Float32 24 kHz mono PCM chunks; raises Overloaded, or ValueError for unusable input."""

    async def add_voice(self, voice: Voice, clips: list[tuple[np.ndarray, str]]) -> None:
        """Make a stored voice usable (encode its clips, cache its prompt)."""

    async def remove_voice(self, voice: Voice) -> None: ...
