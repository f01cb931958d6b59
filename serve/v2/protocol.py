"""The Open Inference Protocol (KServe v2 / Triton) view of csm-serve, shared by the HTTP routes
and the gRPC servicer: the model's tensors, its request parameters, one typed request record,
and the error every failure becomes (an HTTP status and a gRPC code).

The model takes `text` (BYTES, shape [1]: UTF-8, the OpenAI `input` limits) and returns
`audio` (FP32, shape [-1]: 24 kHz mono in -1..1). Request `parameters` carry what the OpenAI
API's extensions carry (`voice`, `seed`, `temperature`, `top_k`, `speaker`,
`max_audio_seconds`), validated by the same schema, so the limits are written once. Triton's
scheduling parameters: `priority` (1 is the highest, 0 the model's default) maps onto the
OpenAI edge's `priority`: 0 and 1 are `interactive`, 2 and above `batch`; `timeout`
(microseconds) bounds how long the request may wait to start, after which it fails with
Triton's "Request timeout expired" (UNAVAILABLE: 503 over HTTP). Triton's sequence parameters
name a conversation (the OpenAI edge's `conversation`): `sequence_id` (a uint64 or a string,
chosen by the client) names it, `sequence_start` creates it (anew, if the id was in use),
`sequence_end` deletes it once that request's turn is spoken; a request in a sequence that
was never started is refused (400), as Triton refuses one without the START flag.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from typing import Annotated

import grpc
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tritonclient.utils import deserialize_bytes_tensor

from contract.errors import ErrorInfo, ErrorKind, first_error
from models.params import SAMPLE_RATE_HZ, MaxAudioSeconds, Seed, Speaker, Temperature, TopK

from ..audio import SampleRate
from ..errors import retry_after
from ..schemas import SpeechRequest

TEXT, AUDIO = "text", "audio"
VERSION = "1"
PLATFORM = "pytorch"
SERVER_NAME = "csm-serve"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data", "parameters", "statistics", "model_configuration"]
EMPTY_FINAL = "triton_enable_empty_final_response"  # asked for by tritonclient's start_stream
FINAL = "triton_final_response"


class V2Error(Exception):
    """A failure as the protocol reports it: `{"error": message}` with `status` over HTTP,
    `grpc_code` over gRPC. `retry_after_s` is set where retrying helps."""

    _GRPC = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
             404: grpc.StatusCode.NOT_FOUND, 409: grpc.StatusCode.ABORTED, 413: grpc.StatusCode.INVALID_ARGUMENT,
             503: grpc.StatusCode.UNAVAILABLE, 500: grpc.StatusCode.INTERNAL}

    def __init__(self, status: int, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.retry_after_s = status, message, retry_after_s

    @property
    def grpc_code(self) -> grpc.StatusCode:
        return self._GRPC.get(self.status, grpc.StatusCode.INTERNAL)


# The v2 protocol's status for each kind of failure (the OpenAI API has its own table:
# serve/errors.py). Overload is 503 + Retry-After here (Triton's answer; UNAVAILABLE over gRPC).
STATUS: dict[ErrorKind, int] = {"invalid_request": 400, "not_found": 404, "conflict": 409, "overloaded": 503,
                                "unavailable": 503, "internal": 500}


def v2_error(info: ErrorInfo, request_id: str, retry_after_s: int) -> V2Error:
    """The protocol's error for a failure's ErrorInfo (internal errors name the request id,
    so an operator can find the logged traceback)."""
    status = STATUS[info.kind]
    message = f"{info.message} (request id {request_id})" if info.kind == "internal" else info.message
    return V2Error(status, message, retry_after(info, retry_after_s) if status == 503 else None)


class InferParams(BaseModel):
    """A request's `parameters`. Unknown names are refused (a typo must not pass silently)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    voice: str = Field("alloy", min_length=1, max_length=128, description="an OpenAI voice name or a custom voice id")
    seed: Seed | None = None
    temperature: Temperature | None = None
    top_k: TopK | None = None
    speaker: Speaker | None = None
    max_audio_seconds: MaxAudioSeconds | None = None
    triton_enable_empty_final_response: bool = False
    priority: int = Field(0, ge=0, description="Triton's: 0 the default (interactive), 1 interactive, 2+ batch")
    timeout: int | None = Field(None, ge=0, description="Triton's: microseconds the request may wait to start")
    sequence_id: Annotated[int, Field(ge=0, lt=2**64)] | Annotated[str, Field(max_length=128)] | None = Field(
        None, description="Triton's: a conversation, named by the client (0 or empty: none)")
    sequence_start: bool = Field(False, description="Triton's: this request starts the sequence (a new conversation)")
    sequence_end: bool = Field(False, description="Triton's: the sequence ends after this request (it is deleted)")
    sample_rate: SampleRate | None = Field(None, description="samples per second of the audio tensor; default 24000")


@dataclass(frozen=True)
class SequenceTurn:
    """A request's place in a Triton sequence: the conversation its id names (replica/
    sequence_conversation), and whether it starts or ends it."""

    sequence_id: int | str
    conversation: str
    start: bool
    end: bool


@dataclass(frozen=True)
class TextInference:
    """One inference, as both edges hand it on: the model asked for, the client's `id` (echoed,
    any string), the server's unique `request_id` (engine and logs), the text and its
    parameters, as the OpenAI schema that validated them, and when the request arrived and
    was validated (monotonic ns, for Triton's statistics)."""

    model: str
    id: str
    request_id: str
    speech: SpeechRequest
    protocol: str  # the tts_requests_total label: v2-http or v2-grpc
    arrived_ns: int
    validated_ns: int
    wants_empty_final: bool = False
    timeout_s: float | None = None  # Triton's `timeout`: how long it may wait to start
    sequence: SequenceTurn | None = None  # Triton's sequence parameters: speech.conversation is its conversation

    @property
    def rate(self) -> int:
        """Samples per second of the `audio` tensor (the response's sample_rate parameter)."""
        return self.speech.sample_rate or SAMPLE_RATE_HZ


def check_text_input(names: list[str], datatype: str, shape: list[int]) -> None:
    """The request has one input, `text`: BYTES holding one element. Both edges check with this."""
    if names != [TEXT]:
        unknown = [n for n in names if n != TEXT]
        raise V2Error(400, f"unexpected input '{unknown[0]}'; the model takes one input, '{TEXT}'" if unknown
                      else f"expected one input '{TEXT}', got {len(names)}")
    if datatype != "BYTES":
        raise V2Error(400, f"input '{TEXT}' must be BYTES, got {datatype}")
    if any(d < 0 for d in shape) or math.prod(shape) != 1:
        raise V2Error(400, f"input '{TEXT}' must have shape [1] (one text), got {shape}")


def check_output_names(names: list[str]) -> None:
    bad = [n for n in names if n != AUDIO]
    if bad:
        raise V2Error(400, f"unknown output '{bad[0]}'; the model has one output, '{AUDIO}'")
    if len(names) > 1:
        raise V2Error(400, f"output '{AUDIO}' asked for more than once")


def text_from_raw(raw: bytes) -> str:
    """The one element of a serialized BYTES tensor (4-byte length + bytes, read with
    tritonclient's own helper), as UTF-8 text."""
    try:
        elements = list(deserialize_bytes_tensor(raw))
    except Exception:  # noqa: BLE001 - a malformed length prefix; tritonclient raises various errors
        raise V2Error(400, f"input '{TEXT}': malformed BYTES tensor data") from None
    if len(elements) != 1 or 4 + len(elements[0]) != len(raw):
        raise V2Error(400, f"input '{TEXT}': expected one BYTES element in {len(raw)} bytes")
    return utf8_text(bytes(elements[0]))


def utf8_text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise V2Error(400, f"input '{TEXT}' is not valid UTF-8") from None


def text_inference(model: str, client_id: str, request_id: str, text: str, parameters: dict,
                   protocol: str, arrived_ns: int) -> TextInference:
    """Validate the parameters and the text with the OpenAI edge's own schema (same limits,
    same messages); raises V2Error(400) naming the parameter."""
    try:
        params = InferParams.model_validate(parameters)
    except ValidationError as e:
        raise V2Error(400, _first_error(e, "parameters")) from None
    sequence = _sequence(params)
    try:
        speech = SpeechRequest(model=model, input=text, response_format="pcm", sample_rate=params.sample_rate,
                               **speech_options(params, sequence))
    except ValidationError as e:
        raise V2Error(400, _first_error(e, None, rename={"input": f"input '{TEXT}'"})) from None
    timeout_s = params.timeout / 1e6 if params.timeout else None  # Triton: 0 is no timeout
    return TextInference(model, client_id, request_id, speech, protocol, arrived_ns, time.monotonic_ns(),
                         params.triton_enable_empty_final_response, timeout_s, sequence)


def speech_options(params: InferParams, sequence: SequenceTurn | None) -> dict:
    """The one mapping of v2's parameters onto the speech options (serve/options.py): Triton's
    priority levels onto interactive / batch, a sequence onto its conversation; the options a
    request leaves unset keep their defaults."""
    options = {"voice": params.voice, "seed": params.seed, "temperature": params.temperature, "top_k": params.top_k,
               "speaker": params.speaker, "max_audio_seconds": params.max_audio_seconds,
               "priority": "batch" if params.priority >= 2 else "interactive",
               "conversation": sequence.conversation if sequence else None}
    return {name: value for name, value in options.items() if value is not None}


def _sequence(params: InferParams) -> SequenceTurn | None:
    if params.sequence_id in (None, 0, ""):  # tritonclient sends none of them outside a sequence
        if params.sequence_start or params.sequence_end:
            raise V2Error(400, "parameters sequence_start / sequence_end need a sequence_id")
        return None
    return SequenceTurn(params.sequence_id, sequence_conversation(params.sequence_id), params.sequence_start,
                        params.sequence_end)


def _first_error(e: ValidationError, prefix: str | None, rename: dict[str, str] | None = None) -> str:
    first = first_error(e)
    where = (rename or {}).get(first.param or "", first.param or "")
    if first.type == "extra_forbidden":
        return f"unknown parameter '{where}'; known: {', '.join(sorted(InferParams.model_fields))}"
    return f"{prefix + ' ' if prefix else ''}{where}: {first.message}"


def sequence_conversation(sequence_id: int | str) -> str:
    """The conversation a v2 sequence id names (Triton's sequence_id: a uint64 or a string,
    chosen by the client): the same id always names the same conversation."""
    kind = "int" if isinstance(sequence_id, int) else "str"
    return "conv_" + hashlib.sha256(f"v2-sequence/{kind}/{sequence_id}".encode()).hexdigest()[:16]
