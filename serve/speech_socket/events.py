"""The events of the text-in WebSocket, `/v1/audio/speech/stream`, in its two dialects.

csm-serve's own dialect takes the OpenAI-Realtime-style names other TTS servers copy
(`session.update`, `input_text_buffer.append` / `.commit` / `.clear`, `response.cancel`,
`session.finish`); vLLM-Omni's (`session.config`, `input.text`, `input.done`,
`session.close`) is spoken to clients written for that server, chosen by the first message
a client sends. docs/speech-stream.md has an example of each; `python -m
serve.speech_socket.events` prints the JSON schema of all of them.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from models.params import Seed

from ..audio import ResponseFormat, output_rate
from ..options import AudioOutput, SpeechOptions, VoiceRef, partial
from ..schemas import ErrorBody, SpeechRequest, Usage

# ---- csm-serve's dialect: client -> server ------------------------------------------------


class SessionConfig(SpeechOptions, AudioOutput):
    """How every response of the session is spoken (sticky; `session.update` changes the
    fields it names): the speech options (serve/options.py), and of POST /v1/audio/speech's
    other fields the model and how the audio is encoded."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    voice: str | VoiceRef = "alloy"  # the session's voice until an update names another
    model: str | None = Field(None, min_length=1, max_length=128, description="default: the served model")
    response_format: ResponseFormat = "pcm"
    audio_transport: Literal["base64", "binary"] = Field(
        "base64", description="base64: response.audio.delta events; binary: the audio bytes as binary frames")

    def request(self, text: str, default_model: str) -> SpeechRequest:
        """The speech request one response's first text makes (validated as on HTTP)."""
        return SpeechRequest(model=self.model or default_model, input=text, **self.audio_output(), **self.options())


SessionPatch = partial("SessionPatch", SessionConfig, doc="The SessionConfig fields to change.")


class SessionUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["session.update"]
    event_id: str | None = None
    session: SessionPatch = Field(default_factory=SessionPatch, description="SessionConfig fields to change")

    def changes(self) -> dict:
        """The fields the client named, as given."""
        return self.session.model_dump(exclude_unset=True)


class TextAppend(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["input_text_buffer.append"]
    event_id: str | None = None
    text: str


class _Bare(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event_id: str | None = None


class TextCommit(_Bare):
    """Speak what is buffered now, then end the response (the socket stays open)."""

    type: Literal["input_text_buffer.commit"]


class TextClear(_Bare):
    """Drop the text not yet speaking (buffered, or queued behind the piece being spoken)."""

    type: Literal["input_text_buffer.clear"]


class ResponseCancel(_Bare):
    """Stop the response now: its audio ends, its unspoken text is dropped."""

    type: Literal["response.cancel"]


class SessionFinish(_Bare):
    """Speak what is buffered, end the response, then close the socket."""

    type: Literal["session.finish"]


ClientEvent = Annotated[SessionUpdate | TextAppend | TextCommit | TextClear | ResponseCancel | SessionFinish,
                        Field(discriminator="type")]
CLIENT_EVENTS = TypeAdapter(ClientEvent)

# ---- csm-serve's dialect: server -> client ------------------------------------------------


class SessionCreated(BaseModel):
    type: Literal["session.created"] = "session.created"
    session: SessionConfig


class SessionUpdated(BaseModel):
    type: Literal["session.updated"] = "session.updated"
    session: SessionConfig


class TextCommitted(BaseModel):
    type: Literal["input_text_buffer.committed"] = "input_text_buffer.committed"


class TextCleared(BaseModel):
    type: Literal["input_text_buffer.cleared"] = "input_text_buffer.cleared"
    num_chars: int = Field(description="characters of text dropped")


class ResponseRef(BaseModel):
    id: str


class ResponseCreated(BaseModel):
    type: Literal["response.created"] = "response.created"
    response: ResponseRef


class AudioDelta(BaseModel):
    type: Literal["response.audio.delta"] = "response.audio.delta"
    response_id: str
    delta: str = Field(description="base64 of the audio bytes, in the session's response_format")


class SegmentDone(BaseModel):
    """A piece of text is spoken: where its audio lies in the response's audio."""

    type: Literal["response.segment.done"] = "response.segment.done"
    response_id: str
    index: int
    text: str
    start_s: float
    end_s: float


class ResponseSummary(BaseModel):
    id: str
    status: Literal["completed", "cancelled", "failed"]
    usage: Usage = Field(description="input_tokens: characters spoken; output_tokens: audio frames (80 ms)")


class ResponseDone(BaseModel):
    type: Literal["response.done"] = "response.done"
    response: ResponseSummary


class SessionFinished(BaseModel):
    type: Literal["session.finished"] = "session.finished"


class ErrorEvent(BaseModel):
    """The same error record as HTTP's body; `event_id`: the client event it answers;
    `retry_after_ms` (an extension, HTTP's retry-after-ms): for a response refused at capacity
    (code `overloaded`), when to try again."""

    type: Literal["error"] = "error"
    event_id: str | None = None
    error: ErrorBody
    retry_after_ms: int | None = None


ServerEvent = Annotated[SessionCreated | SessionUpdated | TextCommitted | TextCleared | ResponseCreated | AudioDelta
                        | SegmentDone | ResponseDone | SessionFinished | ErrorEvent, Field(discriminator="type")]

# ---- vLLM-Omni's dialect ----------------------------------------------------------------------


class OmniConfig(AudioOutput):
    """vLLM-Omni's `session.config`: the REST fields it shares with this server; the ones only
    its models have (task_type, language, ref_audio, ...) are ignored, as it ignores unknown."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    type: Literal["session.config"]
    model: str | None = Field(None, min_length=1, max_length=128)
    voice: str = Field("alloy", validation_alias=AliasChoices("voice", "speaker"), min_length=1, max_length=128)
    response_format: ResponseFormat = "wav"
    seed: Seed | None = None
    stream_audio: bool = False
    split_granularity: Literal["none", "sentence", "clause"] = "none"

    @model_validator(mode="after")
    def _raw_stream(self) -> OmniConfig:
        if self.stream_audio and (self.response_format != "pcm" or self.speed != 1.0):
            raise ValueError("stream_audio needs response_format 'pcm' and speed 1.0")
        return self

    def session(self) -> SessionConfig:
        return SessionConfig(model=self.model, voice=self.voice, seed=self.seed, audio_transport="binary",
                             **self.audio_output())

    @property
    def rate(self) -> int:
        """The rate its audio is sent at (audio.start's sample_rate)."""
        return output_rate(self.response_format, self.sample_rate)


class _OmniEvent(BaseModel):
    model_config = ConfigDict(extra="ignore")  # vLLM-Omni ignores fields it does not know


class OmniText(_OmniEvent):
    type: Literal["input.text"]
    text: str = ""


class OmniDone(_OmniEvent):
    type: Literal["input.done"]


class OmniClose(_OmniEvent):
    type: Literal["session.close"]


OmniEvent = Annotated[OmniConfig | OmniText | OmniDone | OmniClose, Field(discriminator="type")]
OMNI_EVENTS = TypeAdapter(OmniEvent)
OMNI_TYPES = frozenset({"session.config", "input.text", "input.done", "session.close"})


class OmniAudioStart(BaseModel):
    type: Literal["audio.start"] = "audio.start"
    utterance_index: int
    sentence_index: int
    sentence_text: str
    format: str
    sample_rate: int | None = None
    channels: int | None = None


class OmniAudioDone(BaseModel):
    type: Literal["audio.done"] = "audio.done"
    utterance_index: int
    sentence_index: int
    total_bytes: int
    error: bool


class OmniSessionDone(BaseModel):
    type: Literal["session.done"] = "session.done"
    utterance_index: int
    total_sentences: int


class OmniError(BaseModel):
    type: Literal["error"] = "error"
    message: str


def schemas() -> dict:
    """JSON schemas of every event, by dialect and direction."""
    adapter = TypeAdapter
    return {
        "csm-serve": {"client": CLIENT_EVENTS.json_schema(), "server": adapter(ServerEvent).json_schema()},
        "vllm-omni": {"client": OMNI_EVENTS.json_schema(), "server": adapter(
            OmniAudioStart | OmniAudioDone | OmniSessionDone | OmniError).json_schema()},
    }


if __name__ == "__main__":
    print(json.dumps(schemas(), indent=2))
