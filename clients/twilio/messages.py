"""Twilio Media Streams' WebSocket messages (bidirectional `<Connect><Stream>`), the fields this
bridge reads or writes: Twilio sends `connected`, `start` (the stream's sid, the call's custom
`<Parameter>`s, the media format: audio/x-mulaw at 8000 Hz, mono), `media` (the caller's audio,
base64 mu-law), `dtmf`, `mark` (a mark of ours has been played) and `stop`; it takes `media`,
`mark` and `clear` (drop the audio it has buffered, for barge-in)."""

from __future__ import annotations

import base64
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)  # Twilio adds fields over time
    sequence_number: str | None = Field(None, alias="sequenceNumber")


class Connected(_In):
    event: Literal["connected"]


class MediaFormat(BaseModel):
    encoding: str = "audio/x-mulaw"
    sample_rate: int = Field(8000, alias="sampleRate")
    channels: int = 1


class StartInfo(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    stream_sid: str = Field(alias="streamSid")
    call_sid: str = Field("", alias="callSid")
    custom_parameters: dict[str, str] = Field(default_factory=dict, alias="customParameters")
    media_format: MediaFormat = Field(default_factory=MediaFormat, alias="mediaFormat")


class Start(_In):
    event: Literal["start"]
    start: StartInfo


class Payload(BaseModel):
    payload: str


class MediaIn(_In):
    event: Literal["media"]
    media: Payload


class Digit(BaseModel):
    digit: str


class Dtmf(_In):
    event: Literal["dtmf"]
    dtmf: Digit


class MarkName(BaseModel):
    name: str


class MarkIn(_In):
    event: Literal["mark"]
    mark: MarkName


class Stop(_In):
    event: Literal["stop"]


TWILIO_EVENTS = TypeAdapter(Annotated[Connected | Start | MediaIn | Dtmf | MarkIn | Stop, Field(discriminator="event")])


class _Out(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)
    stream_sid: str = Field(alias="streamSid")


class MediaOut(_Out):
    event: Literal["media"] = "media"
    media: Payload

    @classmethod
    def of(cls, stream_sid: str, mulaw: bytes) -> MediaOut:
        return cls(stream_sid=stream_sid, media=Payload(payload=base64.b64encode(mulaw).decode()))


class MarkOut(_Out):
    event: Literal["mark"] = "mark"
    mark: MarkName


class Clear(_Out):
    event: Literal["clear"] = "clear"
