"""OpenAI-compatible request and response schemas (checked against the openai-python types)."""

from __future__ import annotations

import unicodedata
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .options import AudioOutput, SpeechOptions, VoiceRef

MAX_INPUT_CHARS = 4096  # OpenAI's limit on `input`


class SpeechRequest(SpeechOptions, AudioOutput):
    """POST /v1/audio/speech: OpenAI's fields, the speech options and how the audio is sent
    (options.py). Unknown fields are rejected, as OpenAI does."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(min_length=1, max_length=128)
    input: str = Field(min_length=1, max_length=MAX_INPUT_CHARS, description="the text to speak")
    instructions: str | None = Field(
        None, max_length=4096,
        description="accepted for compatibility; CSM has no instruction input, so it is ignored",
    )
    stream_format: Literal["audio", "sse"] = "audio"

    @field_validator("input")
    @classmethod
    def _has_text(cls, value: str) -> str:
        # a letter, digit, punctuation or symbol: not only whitespace, controls, zero-width or combining marks
        if not any(unicodedata.category(c)[0] in "LNPS" for c in value):
            raise ValueError("input must contain text to speak")
        return value


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
