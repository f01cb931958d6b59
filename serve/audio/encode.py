"""Streaming audio encoders for the speech API, built on PyAV (ffmpeg).

The model produces float32 mono PCM at 24 kHz in chunks. :func:`make_encoder` returns an
:class:`AudioEncoder` that turns those chunks into one response format at one sample rate
(formats.py) as they come: every :meth:`AudioEncoder.encode` returns the bytes the codec and
muxer have produced so far, :meth:`AudioEncoder.flush` the rest. Muxers write into a
non-seekable in-memory sink, so headers are the streamable kind (e.g. a WAV header with
unknown sizes); raw formats (pcm, mulaw, alaw) come out in whole samples.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from .formats import MAX_SPEED, MIN_SPEED, SPECS, content_type, output_rate
from .steps import Steps, frame


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

    def __init__(self, fmt: str, speed: float, rate: int) -> None:
        self.sample_rate = rate
        self.content_type = content_type(fmt, rate)
        self._steps = Steps(speed, rate)
        self._done = False

    def encode(self, pcm: np.ndarray) -> bytes:
        """Encode one chunk of float32 mono samples in [-1, 1]; return the bytes ready so far."""
        if self._done:
            raise RuntimeError("encoder already flushed")
        return self._encode_samples(self._steps.process(as_mono_float(pcm)))

    def flush(self) -> bytes:
        """Finish the stream and return the remaining bytes (``b""`` if already flushed)."""
        if self._done:
            return b""
        self._done = True
        return self._encode_samples(self._steps.flush()) + self._finish()

    def _encode_samples(self, samples: np.ndarray) -> bytes:
        raise NotImplementedError

    def _finish(self) -> bytes:
        return b""


class _PcmEncoder(AudioEncoder):
    """OpenAI's ``pcm``: raw signed 16-bit little-endian mono (24 kHz unless asked), no header."""

    def _encode_samples(self, samples: np.ndarray) -> bytes:
        return np.rint(np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


class _MuxEncoder(AudioEncoder):
    """A codec inside a container (or a raw muxer: G.711), written by PyAV to a non-seekable
    in-memory sink; samples come at the codec's rate."""

    def __init__(self, fmt: str, speed: float, rate: int) -> None:
        super().__init__(fmt, speed, rate)
        spec = SPECS[fmt]
        self._sink = _ByteSink()
        self._container = av.open(
            self._sink, mode="w", format=spec.container, container_options={"flush_packets": "1", **spec.options}
        )
        self._stream = self._container.add_stream(spec.codec, rate=rate)
        ctx = self._stream.codec_context
        ctx.layout = "mono"
        ctx.time_base = Fraction(1, rate)
        if spec.bit_rate:
            ctx.bit_rate = spec.bit_rate
        self._pts = 0  # samples given to the codec, at its rate
        self._container.start_encoding()  # header now, so the first encode() already returns it

    def _encode_samples(self, samples: np.ndarray) -> bytes:
        if samples.size:
            self._container.mux(self._stream.encode(frame(samples, self._pts, self.sample_rate)))
            self._pts += samples.size
        return self._sink.take()

    def _finish(self) -> bytes:
        self._container.mux(self._stream.encode(None))
        self._container.close()
        return self._sink.take()


def make_encoder(fmt: str, speed: float = 1.0, sample_rate: int | None = None) -> AudioEncoder:
    """An encoder for ``fmt`` (one of :data:`FORMATS`) at tempo ``speed`` in [0.25, 4.0] and
    ``sample_rate`` (default: the format's own, formats.py).

    ``speed`` changes tempo, not pitch (ffmpeg's atempo); 1.0 bypasses the filter. Raises
    ``ValueError`` naming the API field (``response_format``, ``speed`` or ``sample_rate``)
    for bad values.
    """
    rate = output_rate(fmt, sample_rate)
    try:
        speed = float(speed)
    except (TypeError, ValueError):
        raise ValueError(f"speed must be a number between {MIN_SPEED} and {MAX_SPEED}; got {speed!r}") from None
    if not MIN_SPEED <= speed <= MAX_SPEED:  # also rejects NaN
        raise ValueError(f"speed must be between {MIN_SPEED} and {MAX_SPEED}; got {speed}")
    return _PcmEncoder(fmt, speed, rate) if fmt == "pcm" else _MuxEncoder(fmt, speed, rate)
