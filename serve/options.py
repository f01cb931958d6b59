"""The speech options of one request, declared once (limits and meaning from models.params):
every edge's request shape embeds `SpeechOptions` (OpenAI's body, the socket's session) or
maps its own names onto it in one function (vLLM-Omni's config, v2's parameters), and the
one request path (speech.py) turns them into the job's parameters. A new per-request option
is one field here, one field of SpeechJob and where it is used."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, create_model, field_validator

from models.params import (
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_K,
    GenerationParams,
    MaxAudioSeconds,
    NotBool,
    Priority,
    Seed,
    Speaker,
    Temperature,
    TopK,
)

from .audio import MAX_SPEED, MIN_SPEED, ResponseFormat, SampleRate, output_rate


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


class AudioOutput(BaseModel):
    """How the audio is sent: the format, its tempo and its sample rate (formats.py says which
    go together). Every edge that encodes audio embeds it, each with its own default format."""

    model_config = ConfigDict(extra="forbid")

    response_format: ResponseFormat = "mp3"
    speed: Annotated[float, NotBool] = Field(1.0, ge=MIN_SPEED, le=MAX_SPEED)
    sample_rate: SampleRate | None = Field(None, description=(
        "samples per second of the audio sent (an extension of OpenAI's body); default: the format's own "
        "(24000; opus 48000; mulaw and alaw, G.711 phone audio, 8000)"))

    @field_validator("sample_rate")
    @classmethod
    def _format_takes_it(cls, rate: int | None, info: ValidationInfo) -> int | None:
        if rate is not None and "response_format" in info.data:
            output_rate(info.data["response_format"], rate)  # ValueError: this format cannot be sent at it
        return rate

    def audio_output(self) -> dict:
        """These fields, as another shape that embeds them takes them."""
        return {name: getattr(self, name) for name in AudioOutput.model_fields}


def partial(name: str, *models: type[BaseModel], exclude: tuple[str, ...] = (), doc: str = "") -> type[BaseModel]:
    """The fields of `models`, each optional and unset unless given (a change to, or an
    override of, a full record: `model_dump(exclude_unset=True)` is what was named), typed and
    bounded as they are (each field's own checks); unknown fields refused. Checks across fields
    run on the full record it makes."""
    fields = {key: (_checked(field.annotation, field.metadata) | None, Field(None, description=field.description))
              for model in models for key, field in model.model_fields.items() if key not in exclude}
    return create_model(name, __config__=ConfigDict(extra="forbid", protected_namespaces=()), __doc__=doc, **fields)


def _checked(annotation: object, metadata: list) -> object:
    """A field's type with its own checks (bounds, validators) kept."""
    return Annotated[(annotation, *metadata)] if metadata else annotation
