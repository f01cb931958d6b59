"""The edges' settings (the ingress process), from the environment (CSM_*) or the deployment
config's `server:`; the stores' directories and bounds are stores.settings.StoreSettings (embedded:
the same flat fields), a replica's own settings replica.ReplicaConfig (`replica:`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from stores.settings import StoreSettings


class ServerSettings(BaseSettings, StoreSettings):
    model_config = SettingsConfigDict(env_prefix="CSM_", extra="forbid", protected_namespaces=())

    model_id: str = Field("csm-1b", description="the id /v1/models lists and requests name")
    model_aliases: list[str] = Field(
        default_factory=lambda: ["tts-1", "tts-1-hd", "gpt-4o-mini-tts"],
        description="OpenAI model names accepted as this model, so unmodified clients work",
    )
    api_keys: list[str] = Field(default_factory=list, description="if set, Bearer keys every route but health needs")
    max_turn_audio_bytes: int = Field(10 * 2**20, ge=1024, description="largest turn audio upload")
    max_sample_bytes: int = Field(10 * 2**20, description="largest voice sample upload")
    segment_max_chars: int = Field(250, ge=20, le=1000, description="long input is spoken in pieces of at most this")
    retry_after_s: int = Field(2, ge=1, description="Retry-After on 429/503")
    # POST /v1/audio/speech/batch
    batch_max_chars: int = Field(32768, ge=1, description="most input characters one batch may hold, all items together")
    batch_max_audio_s: float = Field(600.0, gt=0, description=(
        "most audio one batch may produce, all items together (items past it end with batch_audio_limit)"))
    batch_concurrency: int = Field(4, ge=1, le=32, description="items of one batch spoken at once (each holds a row)")
    # The text-in WebSocket (/v1/audio/speech/stream)
    ws_flush_after_s: float = Field(0.5, gt=0, description="text pending this long with no new text is spoken")
    ws_clause_min_words: int = Field(12, ge=1, description="an unfinished sentence is cut at a clause mark after this many words")
    ws_idle_timeout_s: float = Field(60.0, gt=0, description="a socket with no event this long while nothing speaks is closed")
    ws_max_message_bytes: int = Field(65536, ge=1024, description="largest event a client may send (else close 1009)")
    ws_max_text_chars: int = Field(32768, ge=1, description="most text one response may take")
    ws_max_send_buffer_bytes: int = Field(4 * 2**20, ge=65536, description=(
        "most audio and events waiting for a client that does not read (then close 1008, its row freed)"))

