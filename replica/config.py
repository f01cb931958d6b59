"""A replica's static settings (the engine's are models.EngineConfig)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ReplicaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    chunk_s: float = Field(0.24, ge=0.08, le=2.0, description="audio per streamed chunk")
    context_cache_bytes: int = Field(
        512 * 2**20, ge=0,
        description="bytes of prefix KV the context cache keeps (voices, conversations); on a card this memory "
        "competes with the decode slots",
    )
