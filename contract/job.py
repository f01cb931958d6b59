"""The job that crosses from the protocol edges to a replica (in-process, or a Ray handle
away): one speech request, validated, with everything a replica needs to speak it. No torch
here, and it pickles as is (its feed under Ray as a handle, deployments/text_channel.py)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from models.params import GenerationParams, MaxAudioSeconds, Priority
from stores.voices import Voice

from .text_feed import TextFeed


@dataclass(frozen=True)
class RoutingKey:
    """What a router reads of a job (deployments/router.py): its priority, and the context it
    is best served where it is cached (a conversation's id; None: any replica)."""

    priority: Priority
    home: str | None


class SpeechJob(BaseModel):
    """One speech request, as every replica receives it: `texts` are spoken in order in one
    voice, text i with `params.for_segment(i)`, the whole audio at most `max_audio_s` long.
    `priority` and `timeout_s` (the longest it may wait to start): replica/admission.py.
    With a `feed`, the texts after `texts` come from it as they arrive (contract/text_feed.py).
    With a `conversation`, the texts are its next turn: spoken after its earlier turns, and
    kept as a turn of it when the stream completes."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    request_id: str
    texts: tuple[str, ...] = Field(min_length=1)
    voice: Voice
    params: GenerationParams
    max_audio_s: MaxAudioSeconds | None = None
    priority: Priority = "interactive"
    timeout_s: float | None = Field(None, gt=0)
    feed: TextFeed | None = None  # more texts as they arrive, after `texts` (the text-in WebSocket)
    marks: bool = False  # yield a PieceDone after each text's audio (its text and timestamps)
    conversation: str | None = None  # speak the next turn of this conversation (replica/conversations.py)

    @property
    def routing(self) -> RoutingKey:
        return RoutingKey(self.priority, self.conversation)
