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
    enforce_eager: bool = Field(False, description="never capture: every step runs eagerly")
    capture: Literal["auto", "graphs", "compile"] = Field(
        "auto",
        description="how decode steps are captured at warm-up: auto = device graphs on cuda/npu, eager on cpu; "
        "graphs = CUDA graphs / NPU graphs; compile = torch.compile",
    )
    capture_batch_sizes: list[int] | None = Field(
        None, description="batch buckets to capture (default 1, 2, 4, then every 8 up to max_num_seqs)"
    )

    @model_validator(mode="after")
    def _check(self) -> EngineConfig:
        if self.max_frames_cap >= self.max_seq_len:
            raise ValueError("max_frames_cap must be smaller than max_seq_len")
        sizes = self.capture_batch_sizes
        if sizes is not None and not all(1 <= b <= self.max_num_seqs for b in sizes):
            raise ValueError("capture_batch_sizes must lie in [1, max_num_seqs]")
        return self

    def batch_buckets(self) -> list[int]:
        """The batch sizes decode steps are captured for (a batch runs in the next one up)."""
        if self.capture_batch_sizes:
            return sorted(set(self.capture_batch_sizes))
        sizes = [1, 2, 4, *range(8, self.max_num_seqs + 1, 8)]
        return sorted({b for b in sizes if b < self.max_num_seqs} | {self.max_num_seqs})
