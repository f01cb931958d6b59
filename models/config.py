"""The engine's one validated static configuration."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DeviceName = Literal["auto", "npu", "cuda", "cpu"]
DtypeName = Literal["auto", "bfloat16", "float16", "float32"]


class EngineConfig(BaseModel):
    """Static engine settings; a replica builds exactly one engine from one of these."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field("csm-tiny", description="csm-tiny, csm-1b-random, or a local checkpoint dir")
    device: DeviceName = "auto"
    dtype: DtypeName = "auto"
    max_num_seqs: int = Field(16, ge=1, le=1024, description="KV slots: requests decoded at once")
    max_seq_len: int = Field(2048, ge=16, description="backbone positions per slot")
    max_prefill_tokens: int = Field(
        512, ge=16, description="prompt positions prefilled per step (longer prompts are chunked)"
    )
    max_frames_cap: int = Field(750, ge=1, description="upper bound on frames per request (80 ms each)")
    words_per_s: float = Field(
        1.6, gt=0, description="slow speaking rate used to derive a request's default frame cap"
    )
    frames_margin: int = Field(38, ge=0, description="frames added to the derived cap (about 3 s)")

    @model_validator(mode="after")
    def _check(self) -> EngineConfig:
        if self.max_frames_cap >= self.max_seq_len:
            raise ValueError("max_frames_cap must be smaller than max_seq_len")
        return self
