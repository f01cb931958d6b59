"""Streaming sample-domain steps the encoders share, each on PyAV's filters: tempo without a
pitch change (ffmpeg's atempo) and a change of rate (libswresample). Both take and give float32
mono chunks as they come; `flush` gives what they held back at the end."""

from __future__ import annotations

import errno
import math
from fractions import Fraction

import av
import av.error
import av.filter
import numpy as np

from .formats import SAMPLE_RATE

EMPTY = np.zeros(0, dtype=np.float32)


def frame(samples: np.ndarray, pts: int, rate: int) -> av.AudioFrame:
    """A packed float32 mono frame holding ``samples``, stamped with ``pts`` in 1/``rate`` units."""
    out = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
    out.sample_rate = rate
    out.pts = pts
    out.time_base = Fraction(1, rate)
    return out


def _joined(frames: list[av.AudioFrame]) -> np.ndarray:
    chunks = [f.to_ndarray().reshape(-1) for f in frames]  # flt mono
    return np.concatenate(chunks).astype(np.float32, copy=False) if chunks else EMPTY


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


class Tempo:
    """Streaming tempo change without pitch change at 24 kHz: abuffer -> atempo[ -> atempo] -> sink."""

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
            self._graph.push(frame(samples, self._pts, SAMPLE_RATE))
            self._pts += samples.size
        return _joined(_drain(self._graph))

    def flush(self) -> np.ndarray:
        """End the input; return the remaining output samples."""
        self._graph.push(None)
        return _joined(_drain(self._graph))


class Resample:
    """24 kHz float32 mono in, ``rate`` out, streamed (libswresample keeps a few samples of
    filter delay, given back by ``flush``): every chunk out holds whole samples, clipped to
    [-1, 1] (the filter overshoots full-scale input a little; the audio stays in range)."""

    def __init__(self, rate: int) -> None:
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        self._pts = 0

    def process(self, samples: np.ndarray) -> np.ndarray:
        if not samples.size:
            return EMPTY
        out = self._resampler.resample(frame(samples, self._pts, SAMPLE_RATE))
        self._pts += samples.size
        return np.clip(_joined(out), -1.0, 1.0)

    def flush(self) -> np.ndarray:
        return np.clip(_joined(self._resampler.resample(None)), -1.0, 1.0)


class Steps:
    """Tempo (when not 1.0) then rate (when not 24 kHz): the samples a format's encoder takes."""

    def __init__(self, speed: float, rate: int) -> None:
        self._tempo = Tempo(speed) if speed != 1.0 else None
        self._resample = Resample(rate) if rate != SAMPLE_RATE else None

    def process(self, samples: np.ndarray) -> np.ndarray:
        if self._tempo is not None:
            samples = self._tempo.process(samples)
        return self._resample.process(samples) if self._resample is not None else samples

    def flush(self) -> np.ndarray:
        tail = self._tempo.flush() if self._tempo is not None else EMPTY
        if self._resample is None:
            return tail
        return np.concatenate([self._resample.process(tail), self._resample.flush()])
