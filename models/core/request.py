"""A request inside the engine: its prompt, params and progress. Owned by the engine's
thread from `add_prepared` on; the scheduler moves it through its states."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from ..params import FinishReason, GenerationParams, Priority, Segment
from .prompt import PromptTokens


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    PREFILLING = "prefilling"
    DECODING = "decoding"
    FINISHED = "finished"


@dataclass(eq=False)
class Request:
    request_id: str
    prompt: PromptTokens
    params: GenerationParams
    seed: int  # params.seed, or one drawn for this request
    max_frames: int
    context: tuple[Segment, ...] = ()  # the voice / earlier turns; a cached prefix may cover them
    priority: Priority = "interactive"  # batch: the scheduler may pause it between frames
    status: RequestStatus = RequestStatus.WAITING
    slot: int = -1
    num_prefilled: int = 0  # prompt positions already in the KV cache
    num_cached: int = 0  # leading prompt positions whose KV comes from the prefix cache
    prefix: Any = None  # the runner's cached KV for those positions (opaque to the core)
    num_frames: int = 0  # frames sampled so far
    finish_reason: FinishReason | None = None

    @property
    def num_prompt(self) -> int:
        return len(self.prompt)

    def use_prefix(self, prefix: Any, length: int) -> None:
        """Start from a cached prefix of `length` positions (before the first schedule)."""
        self.prefix, self.num_cached, self.num_prefilled = prefix, length, length
