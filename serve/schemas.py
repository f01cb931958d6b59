"""OpenAI-compatible request and response schemas (checked against the openai-python types)."""

from __future__ import annotations

import unicodedata
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

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

from .audio import MAX_SPEED, MIN_SPEED, ResponseFormat

MAX_INPUT_CHARS = 4096  # OpenAI's limit on `input`


class VoiceRef(BaseModel):
    """`voice: {"id": "voice_..."}`: a custom voice made with POST /v1/audio/voices."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=128)


class SpeechRequest(BaseModel):
    """POST /v1/audio/speech. Unknown fields are rejected, as OpenAI does."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(min_length=1, max_length=128)
    input: str = Field(min_length=1, max_length=MAX_INPUT_CHARS, description="the text to speak")
    voice: str | VoiceRef = Field(description="an OpenAI voice name, a custom voice id, or {'id': ...}")
    instructions: str | None = Field(
        None, max_length=4096,
        description="accepted for compatibility; CSM has no instruction input, so it is ignored",
    )
    response_format: ResponseFormat = "mp3"
    speed: float = Field(1.0, ge=MIN_SPEED, le=MAX_SPEED)
    stream_format: Literal["audio", "sse"] = "audio"
    # Extensions for CSM (not in OpenAI's API); limits and meaning from models.params.
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

    @field_validator("input")
    @classmethod
    def _has_text(cls, value: str) -> str:
        # a letter, digit, punctuation or symbol: not only whitespace, controls, zero-width or combining marks
        if not any(unicodedata.category(c)[0] in "LNPS" for c in value):
            raise ValueError("input must contain text to speak")
        return value

    @property
    def voice_key(self) -> str:
        return self.voice.id if isinstance(self.voice, VoiceRef) else self.voice

    def generation_params(self, voice_speaker: int) -> GenerationParams:
        """The one conversion from this schema to the engine's parameters."""
        speaker = voice_speaker if self.speaker is None else self.speaker
        return GenerationParams(speaker=speaker, temperature=self.temperature, top_k=self.top_k, seed=self.seed)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class VoiceObject(BaseModel):
    id: str
    object: Literal["audio.voice"] = "audio.voice"
    name: str
    created_at: int


class VoiceList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VoiceObject]


class ConversationCreate(BaseModel):
    """POST /v1/audio/conversations (the body is optional)."""

    model_config = ConfigDict(extra="forbid")
    voice: str | VoiceRef | None = Field(None, description=(
        "a voice every turn of the model is spoken in (its sample starts the context); default: each speech "
        "request's voice"))


class ConversationTurnObject(BaseModel):
    speaker: int
    text: str
    source: Literal["audio", "generated"] = Field(description="audio: added with its recording; generated: spoken here")


class ConversationObject(BaseModel):
    id: str
    object: Literal["audio.conversation"] = "audio.conversation"
    created_at: int
    expires_at: int = Field(description="when it is deleted unless it changes before (Unix seconds)")
    voice: str | None
    turns: list[ConversationTurnObject]
    bytes: int = Field(description="what its turns' audio and codes take in the store")


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int


class SpeechAudioDelta(BaseModel):
    type: Literal["speech.audio.delta"] = "speech.audio.delta"
    audio: str  # base64


class SpeechAudioDone(BaseModel):
    type: Literal["speech.audio.done"] = "speech.audio.done"
    usage: Usage


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class SpeechError(BaseModel):
    """The last SSE event of a stream that failed after it started (its status was 200)."""

    type: Literal["error"] = "error"
    error: ErrorBody
