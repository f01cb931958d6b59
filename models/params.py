"""Typed records at the engine's boundaries, and every per-request limit, written once.

Pure data (pydantic, no torch), so the HTTP edge, the Ray handle, the scheduler and tests
share them: a `GenerationParams` built at the edge is the same object the engine samples
with. The limits are the `Annotated` types below; schemas elsewhere reuse them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

# ---- the audio the model makes ------------------------------------------------------------
NUM_CODEBOOKS = 32  # Mimi codebooks per frame
CODEBOOK_SIZE = 2048  # Mimi ids per codebook; the model's codebook vocabulary adds 3 specials
AUDIO_VOCAB_SIZE = 2051
SAMPLE_RATE_HZ = 24_000
SAMPLES_PER_FRAME = 1920
FRAME_RATE_HZ = SAMPLE_RATE_HZ / SAMPLES_PER_FRAME  # 12.5
FRAME_S = SAMPLES_PER_FRAME / SAMPLE_RATE_HZ  # 0.08
# transformers' rule: a frame whose codebooks 0..30 are all codebook_eos (0) ends the speech.
EOS_CODEBOOKS = 31
EOS_FRAME = (0,) * NUM_CODEBOOKS  # the frame at a context segment's audio_eos position


def is_eos_frame(frame: list[int] | tuple[int, ...]) -> bool:
    """True for the frame that ends speech (codebooks 0..30 all 0)."""
    return all(c == 0 for c in frame[:EOS_CODEBOOKS])


# ---- per-request limits (each written here only) -------------------------------------------
SEED_LIMIT = 2**63


def _not_bool(value: object) -> object:
    """JSON's true/false is not a number (pydantic's lax mode would read it as 1 / 0)."""
    if isinstance(value, bool):
        raise PydanticCustomError("number_type", "Input should be a number, not a boolean")
    return value


NotBool = BeforeValidator(_not_bool)  # last in an Annotated: it runs before the type and its bounds
Speaker = Annotated[int, Field(ge=0, le=999, description="CSM speaker id"), NotBool]
Temperature = Annotated[float, Field(ge=0.0, le=5.0, description="0 is greedy"), NotBool]
TopK = Annotated[int, Field(ge=1, le=AUDIO_VOCAB_SIZE, description="sample among the k likeliest codes"), NotBool]
Seed = Annotated[int, Field(ge=0, lt=SEED_LIMIT, description="same seed, same audio, busy or idle"), NotBool]
MaxFrames = Annotated[int, Field(ge=1, description="cap on frames (80 ms each); None: derived from the text"), NotBool]
MaxAudioSeconds = Annotated[float, Field(gt=0, le=600, description="cap on the audio length, in seconds"), NotBool]
Priority = Literal["interactive", "batch"]  # batch: no real-time need; paused between frames for interactive rows
DEFAULT_TEMPERATURE = 0.9
DEFAULT_TOP_K = 50


class Segment(BaseModel):
    """One earlier turn of the conversation: what was said, by whom, and its Mimi codes.

    `codes` is a tuple of frames, each 32 codebook ids in [0, 2048)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    speaker: Speaker = 0
    text: str
    codes: tuple[tuple[int, ...], ...] = ()

    @field_validator("codes")
    @classmethod
    def _check_codes(cls, codes: tuple[tuple[int, ...], ...]) -> tuple[tuple[int, ...], ...]:
        for frame in codes:
            if len(frame) != NUM_CODEBOOKS:
                raise ValueError(f"every frame must hold {NUM_CODEBOOKS} codes, got {len(frame)}")
            if any(not 0 <= c < CODEBOOK_SIZE for c in frame):
                raise ValueError(f"codes must lie in [0, {CODEBOOK_SIZE})")
        return codes


class GenerationParams(BaseModel):
    """Per-request generation settings: built once (at the HTTP edge, by a test, by the CLI),
    validated once, pickled as is across the Ray handle, read by the engine. Invalid values
    raise pydantic's ValidationError (a ValueError) naming the field."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    speaker: Speaker = 0
    temperature: Temperature = DEFAULT_TEMPERATURE
    top_k: TopK = DEFAULT_TOP_K
    seed: Seed | None = None
    max_frames: MaxFrames | None = None

    def for_segment(self, index: int) -> GenerationParams:
        """The params of segment `index` of a long text: seed + index (wrapping inside the seed
        range), validated like any other params."""
        if self.seed is None or index == 0:
            return self
        return GenerationParams.model_validate({**self.model_dump(), "seed": (self.seed + index) % SEED_LIMIT})


class FinishReason(str, enum.Enum):
    EOS = "eos"
    LENGTH = "length"
    ABORT = "abort"


@dataclass(frozen=True)
class StepOutput:
    """What one step produced for one request: new frames of 32 codes, and whether it ended.

    `frames` is empty for an aborted request and for the step whose frame was the EOS frame."""

    request_id: str
    frames: list[list[int]] = field(default_factory=list)
    is_finished: bool = False
    finish_reason: FinishReason | None = None


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
    num_prefix_hits: int = 0  # requests that started from a computed prefix
    num_cached_tokens_total: int = 0  # prompt positions taken from prefixes (not prefilled)
    num_finished: tuple[tuple[str, int], ...] = ()  # (reason, count): eos, length, abort, error
    capture_mode: str | None = None  # how decode steps run: "graphs", "compile", or None (eager)
    num_captured_decodes: int = 0  # backbone decode steps that replayed a captured step
    num_captured_frames: int = 0  # frame samplers (depth loops) that replayed a captured step
    num_paused: int = 0  # batch-priority requests the latest schedule left out (paused, slot kept)
    period_batch: int = 0  # rows of the latest decode-only step followed at once by another step ...
    period_s: float = 0.0  # ... and the wall time from its start to the next one's (0: none measured)
    last_num_prefills: int = 0  # requests that prefilled (part of) their prompt in the latest step
    last_num_decodes: int = 0  # rows that decoded in the latest step
