"""The stores' bounds, one record: where voices and conversations live and how much a
conversation may hold. The edges' settings (serve/settings.py) embed it; a replica reads the
same fields (deployments/replica.py passes them), so each bound is written once."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from .conversations import ConversationStore
from .voices import VoiceStore


class StoreSettings(BaseModel):
    model_config = ConfigDict(extra="ignore")  # built from the edges' settings, which have more

    voices_dir: str | None = Field(None, description="where voices live; custom voices need it")
    conversations_dir: str | None = Field(None, description=(
        "where conversations live (shared by every replica, as voices_dir); conversations need it"))
    max_conversations: int = Field(1000, ge=1, description="conversations kept at once (then 400 conversation_limit)")
    max_conversation_bytes: int = Field(16 * 2**20, ge=65536, description=(
        "bytes of turns (audio, codes) one conversation may hold (then 400 conversation_too_large)"))
    conversation_idle_s: float = Field(24 * 3600.0, gt=0, description="a conversation unchanged this long is deleted")

    def voice_store(self) -> VoiceStore:
        return VoiceStore(self.voices_dir)

    def conversation_store(self) -> ConversationStore:
        """The conversations' store as these settings bound it (disabled without a directory)."""
        return ConversationStore(self.conversations_dir, max_count=self.max_conversations,
                                 max_bytes=self.max_conversation_bytes, idle_expiry_s=self.conversation_idle_s)
