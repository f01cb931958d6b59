"""Typed objects at the engine's boundaries: request params in, step outputs and stats out.

Pure data (no torch), so the scheduler, the HTTP edge and tests can share them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, field_validator

NUM_CODEBOOKS = 32
FRAME_RATE_HZ = 12.5
SAMPLE_RATE_HZ = 24_000
SAMPLES_PER_FRAME = 1920


class Segment(BaseModel):
    """One earlier turn of the conversation: what was said, by whom, and its Mimi codes.

    `codes` is a list of frames, each a list of 32 codebook ids in [0, 2048).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    speaker: int = Field(0, ge=0, le=999)
    text: str
    codes: tuple[tuple[int, ...], ...] = ()

    @field_validator("codes")
    @classmethod
    def _check_codes(cls, codes: tuple[tuple[int, ...], ...]) -> tuple[tuple[int, ...], ...]:
        for frame in codes:
            if len(frame) != NUM_CODEBOOKS:
                raise ValueError(f"every frame must hold {NUM_CODEBOOKS} codes, got {len(frame)}")
            if any(not 0 <= c < 2048 for c in frame):
                raise ValueError("codes must lie in [0, 2048)")
        return codes


class GenerationParams(BaseModel):
    """Per-request generation settings. Invalid values raise a ValueError naming the field
    (pydantic's ValidationError is a ValueError)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    speaker: int = Field(0, ge=0, le=999)
    context: tuple[Segment, ...] = ()
    temperature: float = Field(0.9, ge=0.0, le=5.0, description="0 means greedy")
    top_k: int = Field(50, ge=1, le=2051)
    seed: int | None = Field(None, ge=0, lt=2**63)
    max_frames: int | None = Field(None, ge=1, description="None: derived from the text")


class FinishReason(str, enum.Enum):
    EOS = "eos"
    LENGTH = "length"
    ABORT = "abort"


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    PREFILLING = "prefilling"
    DECODING = "decoding"
    FINISHED = "finished"


@dataclass(frozen=True)
class StepOutput:
    """What one step produced for one request: new frames of 32 codes, and whether it ended.

    `frames` is empty for a step that only prefilled, and for an aborted request.
    """

    request_id: str
    frames: list[list[int]] = field(default_factory=list)
    is_finished: bool = False
    finish_reason: FinishReason | None = None
    num_frames_total: int = 0


@dataclass(frozen=True)
class EngineStats:
    """A snapshot for metrics and health."""

    num_running: int
    num_waiting: int
    num_kv_slots_used: int
    num_kv_slots_total: int
    last_step_s: float
    last_batch_size: int
    num_steps: int
    num_frames_total: int
    num_prompt_tokens_total: int
    num_prefix_hits: int = 0
    num_prefixes: int = 0
