"""The speech options of one request, declared once (limits and meaning from models.params):
every edge's request shape embeds `SpeechOptions` (OpenAI's body, the socket's session) or
maps its own names onto it in one function (vLLM-Omni's config, v2's parameters), and the
one request path (speech.py) turns them into the job's parameters. A new per-request option
is one field here, one field of SpeechJob and where it is used."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from models.params import (
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_K,
    GenerationParams,
    MaxAudioSeconds,
    Priority,
    Seed,
    Speaker,
    Temperature,
    TopK,
)


class VoiceRef(BaseModel):
    """`voice: {"id": "voice_..."}`: a custom voice made with POST /v1/audio/voices."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=128)


class SpeechOptions(BaseModel):
    """How a request is spoken: its voice (or the conversation whose next turn it is), the
    sampling, its audio cap and its priority. CSM's extensions of OpenAI's body but `voice`."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    voice: str | VoiceRef = Field(description="an OpenAI voice name, a custom voice id, or {'id': ...}")
    seed: Seed | None = None
    temperature: Temperature = DEFAULT_TEMPERATURE
    top_k: TopK = DEFAULT_TOP_K
    max_audio_seconds: MaxAudioSeconds | None = None
    speaker: Speaker | None = Field(None, description="CSM speaker id; default: the voice's")
    conversation: str | None = Field(None, max_length=128, description=(
        "a conversation's id (POST /v1/audio/conversations): the input is spoken as its next turn, after its "
        "earlier turns, and kept as a turn of it when the audio completes"))
    priority: Priority = Field("interactive", description=(
        "interactive: a listener plays it as it arrives (admitted only while every such stream stays real time); "
        "batch: no real-time need (narration, bulk): uses spare capacity, paused between frames when interactive "
        "streams need the step"))

    @property
    def voice_key(self) -> str:
        return self.voice.id if isinstance(self.voice, VoiceRef) else self.voice

    def options(self) -> dict:
        """These options, as the fields of another shape that embeds them (values as they are)."""
        return {name: getattr(self, name) for name in SpeechOptions.model_fields}

    def generation_params(self, voice_speaker: int) -> GenerationParams:
        """The one conversion from the options to the engine's parameters."""
        speaker = voice_speaker if self.speaker is None else self.speaker
        return GenerationParams(speaker=speaker, temperature=self.temperature, top_k=self.top_k, seed=self.seed)
