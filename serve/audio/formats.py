"""The response formats and output sample rates the speech API offers, and which go together.

The model speaks 24 kHz mono; every edge can ask for another `sample_rate` (an extension of
OpenAI's body, like `seed`). Phone audio is `mulaw` / `alaw`: raw G.711 (ITU-T G.711, as
Twilio's media streams and SIP trunks carry it), 8 kHz unless asked otherwise."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal, get_args

from pydantic import BeforeValidator

from models.params import SAMPLE_RATE_HZ as SAMPLE_RATE

ResponseFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm", "mulaw", "alaw"]
FORMATS: tuple[str, ...] = get_args(ResponseFormat)
_Rates = Literal[8000, 16000, 22050, 24000, 44100, 48000]
SAMPLE_RATES: tuple[int, ...] = get_args(_Rates)
# one of the rates; a number in a string ("16000", from a command line or the environment) is read as it
SampleRate = Annotated[_Rates, BeforeValidator(lambda v: int(v) if isinstance(v, str) and v.isdigit() else v)]
MIN_SPEED, MAX_SPEED = 0.25, 4.0


@dataclass(frozen=True)
class FormatSpec:
    """How one response format is made: muxer and encoder (PyAV's names; none for `pcm`, which
    is written directly), its rate by default and the rates it can take, bitrate, muxer options."""

    container: str
    codec: str
    mime: str
    rate: int = SAMPLE_RATE
    rates: tuple[int, ...] = SAMPLE_RATES
    bit_rate: int = 0
    options: dict[str, str] = field(default_factory=dict)


SPECS: dict[str, FormatSpec] = {
    "mp3": FormatSpec("mp3", "libmp3lame", "audio/mpeg", bit_rate=64_000),
    # Opus runs at 48 kHz by default (as OpenAI sends it), or at the lower rates libopus has;
    # short Ogg pages (100 ms instead of 1 s) keep streaming latency low.
    "opus": FormatSpec("ogg", "libopus", "audio/ogg", rate=48_000, rates=(8000, 16000, 24000, 48000),
                       bit_rate=48_000, options={"page_duration": "100000"}),
    "aac": FormatSpec("adts", "aac", "audio/aac", bit_rate=64_000),
    # No 8 KiB padding block: it only serves rewriting the header in place, impossible on a stream.
    "flac": FormatSpec("flac", "flac", "audio/flac", options={"metadata_header_padding": "0"}),
    "wav": FormatSpec("wav", "pcm_s16le", "audio/wav"),
    "pcm": FormatSpec("", "", "audio/pcm"),
    # RFC 4856's media types for G.711, with the rate as their parameter
    "mulaw": FormatSpec("mulaw", "pcm_mulaw", "audio/PCMU", rate=8000),
    "alaw": FormatSpec("alaw", "pcm_alaw", "audio/PCMA", rate=8000),
}
CONTENT_TYPES: dict[str, str] = {fmt: spec.mime for fmt, spec in SPECS.items()}


def output_rate(fmt: str, sample_rate: int | None) -> int:
    """The rate `fmt` is sent at: `sample_rate`, or the format's own when None. Raises
    ValueError naming the field for a format it does not exist in."""
    if fmt not in SPECS:
        raise ValueError(f"response_format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    spec = SPECS[fmt]
    if sample_rate is None:
        return spec.rate
    if sample_rate not in spec.rates:
        raise ValueError(f"sample_rate {sample_rate} is not available for {fmt}; it takes "
                         + ", ".join(map(str, spec.rates)))
    return sample_rate


def content_type(fmt: str, rate: int) -> str:
    """The Content-Type of `fmt` at `rate` (G.711's names its rate, as RFC 4856 has it)."""
    mime = SPECS[fmt].mime
    return f"{mime};rate={rate}" if fmt in ("mulaw", "alaw") else mime
