"""Streaming audio encoders and a decoder for the speech API, built on PyAV (ffmpeg).

The model produces float32 mono PCM at 24 kHz in chunks. :func:`make_encoder` returns an
:class:`AudioEncoder` that turns those chunks into one of OpenAI's ``response_format`` byte
streams as they come: every :meth:`AudioEncoder.encode` returns the bytes the codec and muxer
have produced so far, :meth:`AudioEncoder.flush` the rest. Muxers write into a non-seekable
in-memory sink, so headers are the streamable kind (e.g. a WAV header with unknown sizes).

:func:`decode_audio` goes the other way: any common container/codec in, 24 kHz mono float32 out.
"""

from __future__ import annotations

import errno
import io
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal, get_args

import av
import av.error
import av.filter
import numpy as np

from models.params import SAMPLE_RATE_HZ as SAMPLE_RATE

ResponseFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
FORMATS: tuple[str, ...] = get_args(ResponseFormat)
CONTENT_TYPES: dict[str, str] = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
                                  "wav": "audio/wav", "pcm": "audio/pcm"}
MIN_SPEED, MAX_SPEED = 0.25, 4.0
_EMPTY = np.zeros(0, dtype=np.float32)


class AudioDecodeError(ValueError):
    """The bytes could not be decoded into audio (corrupt, unsupported, no audio stream or empty)."""


@dataclass(frozen=True)
class _Spec:  # how one response format is made: muxer, encoder, codec rate, bitrate, muxer options
    container: str
    codec: str
    rate: int = SAMPLE_RATE
    bit_rate: int = 0
    options: dict[str, str] = field(default_factory=dict)


_SPECS: dict[str, _Spec] = {
    "mp3": _Spec("mp3", "libmp3lame", bit_rate=64_000),
    # Opus only runs at 48 kHz; short Ogg pages (100 ms instead of 1 s) keep streaming latency low.
    "opus": _Spec("ogg", "libopus", rate=48_000, bit_rate=48_000, options={"page_duration": "100000"}),
    "aac": _Spec("adts", "aac", bit_rate=64_000),
    # No 8 KiB padding block: it only serves rewriting the header in place, impossible on a stream.
    "flac": _Spec("flac", "flac", options={"metadata_header_padding": "0"}),
    "wav": _Spec("wav", "pcm_s16le"),
}


class _ByteSink:
    """Write-only, non-seekable file object that collects what a muxer writes until taken."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def seekable(self) -> bool:
        return False

    def take(self) -> bytes:
        out = b"".join(self._chunks)
        self._chunks.clear()
        return out


def _frame(samples: np.ndarray, pts: int, rate: int) -> av.AudioFrame:
    """A packed float32 mono frame holding ``samples``, stamped with ``pts`` in 1/``rate`` units."""
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate = rate
    frame.pts = pts
    frame.time_base = Fraction(1, rate)
    return frame


def _drain(graph: av.filter.Graph) -> list[av.AudioFrame]:
    """Pull every frame a filter graph has ready (stops on EAGAIN or end of stream)."""
    frames = []
    while True:
        try:
            frames.append(graph.pull())
        except EOFError:
            return frames
        except av.error.FFmpegError as exc:
            if exc.errno != errno.EAGAIN:
                raise
            return frames


def _atempo_factors(speed: float) -> tuple[float, ...]:
    """Split ``speed`` into atempo factors inside [0.5, 2.0], the range every ffmpeg accepts."""
    if 0.5 <= speed <= 2.0:
        return (speed,)
    root = math.sqrt(speed)  # speed in [0.25, 4] -> root in [0.5, 2]
    return (root, root)


class _Tempo:
    """Streaming tempo change without pitch change: abuffer -> atempo[ -> atempo] -> abuffersink."""

    def __init__(self, speed: float) -> None:
        self._graph = av.filter.Graph()
        src = self._graph.add_abuffer(
            sample_rate=SAMPLE_RATE, format="flt", layout="mono", time_base=Fraction(1, SAMPLE_RATE)
        )
        tempos = [self._graph.add("atempo", f"{factor:.9f}") for factor in _atempo_factors(speed)]
        fmt = self._graph.add("aformat", "sample_fmts=flt:channel_layouts=mono")
        sink = self._graph.add("abuffersink")
        self._graph.link_nodes(src, *tempos, fmt, sink)
        self._graph.configure()
        self._pts = 0

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Feed input samples; return the tempo-changed samples available so far."""
        if samples.size:
            self._graph.push(_frame(samples, self._pts, SAMPLE_RATE))
            self._pts += samples.size
        return self._collect()

    def flush(self) -> np.ndarray:
        """End the input; return the remaining output samples."""
        self._graph.push(None)
        return self._collect()

    def _collect(self) -> np.ndarray:
        chunks = [f.to_ndarray().reshape(-1) for f in _drain(self._graph)]  # flt mono, per aformat
        return np.concatenate(chunks) if chunks else _EMPTY


def as_mono_float(pcm: np.ndarray) -> np.ndarray:
    """Validate a chunk of mono samples; return it as contiguous float32 clipped to [-1, 1]."""
    samples = np.asarray(pcm, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"pcm must be a 1-D array of mono samples, got shape {samples.shape}")
    return np.clip(np.nan_to_num(samples), -1.0, 1.0)


class AudioEncoder:
    """Incremental encoder from 24 kHz mono float32 chunks to one response format.

    ``encode(chunk)`` returns the bytes produced so far (possibly ``b""`` while a codec fills a
    frame); ``flush()`` returns the rest and finishes the stream. Concatenating every returned
    ``bytes`` in order gives the complete file. Build one with :func:`make_encoder`.
    """

    def __init__(self, fmt: str, speed: float) -> None:
        self.content_type = CONTENT_TYPES[fmt]
        self._tempo = _Tempo(speed) if speed != 1.0 else None
        self._done = False

    def encode(self, pcm: np.ndarray) -> bytes:
        """Encode one chunk of float32 mono samples in [-1, 1]; return the bytes ready so far."""
        if self._done:
            raise RuntimeError("encoder already flushed")
        samples = as_mono_float(pcm)
        if self._tempo is not None:
            samples = self._tempo.process(samples)
        return self._encode_samples(samples)

    def flush(self) -> bytes:
        """Finish the stream and return the remaining bytes (``b""`` if already flushed)."""
        if self._done:
            return b""
        self._done = True
        tail = self._tempo.flush() if self._tempo is not None else _EMPTY
        return self._encode_samples(tail) + self._finish()

    def _encode_samples(self, samples: np.ndarray) -> bytes:
        raise NotImplementedError

    def _finish(self) -> bytes:
        return b""


class _PcmEncoder(AudioEncoder):
    """OpenAI's ``pcm``: raw signed 16-bit little-endian mono at 24 kHz, no header."""

    def _encode_samples(self, samples: np.ndarray) -> bytes:
        return np.rint(samples * 32767.0).astype("<i2").tobytes()


class _MuxEncoder(AudioEncoder):
    """A codec inside a container, written by PyAV to a non-seekable in-memory sink."""

    def __init__(self, fmt: str, speed: float) -> None:
        super().__init__(fmt, speed)
        spec = _SPECS[fmt]
        self._rate = spec.rate
        self._sink = _ByteSink()
        self._container = av.open(
            self._sink, mode="w", format=spec.container, container_options={"flush_packets": "1", **spec.options}
        )
        self._stream = self._container.add_stream(spec.codec, rate=spec.rate)
        ctx = self._stream.codec_context
        ctx.layout = "mono"
        ctx.time_base = Fraction(1, spec.rate)
        if spec.bit_rate:
            ctx.bit_rate = spec.bit_rate
        self._resampler = (
            av.AudioResampler(format="flt", layout="mono", rate=spec.rate) if spec.rate != SAMPLE_RATE else None
        )
        self._in_pts = 0  # samples fed, at SAMPLE_RATE
        self._out_pts = 0  # samples given to the codec, at the codec's rate
        self._container.start_encoding()  # header now, so the first encode() already returns it

    def _encode_samples(self, samples: np.ndarray) -> bytes:
        if samples.size:
            frame = _frame(samples, self._in_pts, SAMPLE_RATE)
            self._in_pts += samples.size
            self._encode_frames(self._resampler.resample(frame) if self._resampler else [frame])
        return self._sink.take()

    def _encode_frames(self, frames: list[av.AudioFrame]) -> None:
        for frame in frames:
            frame.pts = self._out_pts
            frame.time_base = Fraction(1, self._rate)
            self._out_pts += frame.samples
            self._container.mux(self._stream.encode(frame))

    def _finish(self) -> bytes:
        if self._resampler is not None:
            self._encode_frames(self._resampler.resample(None))
        self._container.mux(self._stream.encode(None))
        self._container.close()
        return self._sink.take()


def make_encoder(fmt: str, speed: float = 1.0) -> AudioEncoder:
    """An encoder for ``fmt`` (one of :data:`FORMATS`) at tempo ``speed`` in [0.25, 4.0].

    ``speed`` changes tempo, not pitch (ffmpeg's atempo); 1.0 bypasses the filter. Raises
    ``ValueError`` naming the API field (``response_format`` or ``speed``) for bad values.
    """
    if fmt not in FORMATS:
        raise ValueError(f"response_format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    try:
        speed = float(speed)
    except (TypeError, ValueError):
        raise ValueError(f"speed must be a number between {MIN_SPEED} and {MAX_SPEED}; got {speed!r}") from None
    if not MIN_SPEED <= speed <= MAX_SPEED:  # also rejects NaN
        raise ValueError(f"speed must be between {MIN_SPEED} and {MAX_SPEED}; got {speed}")
    return _PcmEncoder(fmt, speed) if fmt == "pcm" else _MuxEncoder(fmt, speed)


def decode_audio(data: bytes, max_seconds: float | None = None) -> np.ndarray:
    """Decode audio bytes of any common container/codec to 24 kHz mono float32 in [-1, 1].

    Channels are averaged. With ``max_seconds``, decoding stops as soon as more than that much
    audio has been decoded, so the result is then longer than ``max_seconds`` (a caller can tell
    the input was too long) without the cost of decoding all of it.
    Raises :class:`AudioDecodeError` for empty or undecodable bytes, no audio stream, or no samples.
    """
    if not data:
        raise AudioDecodeError("audio is empty (0 bytes)")
    limit = None if max_seconds is None else int(max_seconds * SAMPLE_RATE)
    try:
        samples = _decode(bytes(data), limit)
    except AudioDecodeError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise AudioDecodeError(f"could not decode audio: {reason}") from exc
    if samples.size == 0:
        raise AudioDecodeError("audio contains no samples")
    return samples


def _decode(data: bytes, limit: int | None) -> np.ndarray:
    """Decode the first audio stream of ``data``; stop once more than ``limit`` samples are out."""
    chunks: list[np.ndarray] = []
    total = 0
    with av.open(io.BytesIO(data), mode="r") as container:
        if not container.streams.audio:
            raise AudioDecodeError("no audio stream found")
        resampler = av.AudioResampler(format="fltp", rate=SAMPLE_RATE)  # keeps the layout
        for packet_frame in container.decode(container.streams.audio[0]):
            for frame in resampler.resample(packet_frame):
                chunks.append(frame.to_ndarray().mean(axis=0))
                total += frame.samples
            if limit is not None and total > limit:
                break
        else:
            chunks.extend(frame.to_ndarray().mean(axis=0) for frame in resampler.resample(None))
    if not chunks:
        return _EMPTY
    return np.clip(np.concatenate(chunks), -1.0, 1.0).astype(np.float32)
