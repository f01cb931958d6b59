"""Decoding uploaded audio (voice samples, conversation turns): any common container or
codec in, 24 kHz mono float32 out, through PyAV."""

from __future__ import annotations

import io

import av
import av.error
import numpy as np

from .formats import SAMPLE_RATE
from .steps import EMPTY as _EMPTY


class AudioDecodeError(ValueError):
    """The bytes could not be decoded into audio (corrupt, unsupported, no audio stream or empty)."""


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
