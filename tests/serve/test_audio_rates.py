"""Output sample rates and phone audio (G.711): each format at each rate it takes, checked by
decoding with PyAV, and against the 24 kHz stream resampled by an independent one-shot
libswresample pass."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from serve.audio import FORMATS, SAMPLE_RATE, SAMPLE_RATES, content_type, make_encoder, output_rate
from serve.audio.formats import SPECS
from tests.serve.test_audio import chunked, dominant_hz, tone

CASES = [(fmt, rate) for fmt in FORMATS for rate in SPECS[fmt].rates]


def encode(fmt: str, signal: np.ndarray, rate: int | None, sizes=(1920, 500, 7000)) -> tuple[list[bytes], bytes]:
    enc = make_encoder(fmt, sample_rate=rate)
    return [enc.encode(part) for part in chunked(signal, sizes)], enc.flush()


def read(fmt: str, data: bytes, rate: int) -> tuple[np.ndarray, int]:
    """(samples as float, the rate the decoder reports), at the file's own rate."""
    if fmt == "pcm":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767.0, rate
    options = {"sample_rate": str(rate)} if fmt in ("mulaw", "alaw") else {}
    with av.open(io.BytesIO(data), format=fmt if options else None, options=options) as f:
        stream = f.streams.audio[0]
        frames = [fr.to_ndarray().reshape(-1) for fr in f.decode(stream)]
        scale = 32768.0 if frames[0].dtype == np.int16 else 1.0
        return np.concatenate(frames).astype(np.float32) / scale, stream.codec_context.sample_rate


def resampled(signal: np.ndarray, rate: int) -> np.ndarray:
    """The whole signal resampled in one go (no streaming), as the reference."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    frame = av.AudioFrame.from_ndarray(signal.reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate = SAMPLE_RATE
    frames = resampler.resample(frame) + resampler.resample(None)
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames])


@pytest.mark.parametrize(("fmt", "rate"), CASES)
def test_every_format_at_every_rate_it_takes(fmt, rate):
    signal = tone(1.0, freq=440.0, noise=0.0)
    pieces, tail = encode(fmt, signal, rate)
    samples, reported = read(fmt, b"".join(pieces) + tail, rate)
    decoded_rate = 48_000 if fmt == "opus" else rate  # Ogg Opus always decodes at 48 kHz
    assert reported == decoded_rate
    expected = len(signal) * decoded_rate / SAMPLE_RATE
    assert abs(len(samples) - expected) <= 0.03 * expected + 2 * 1152 * decoded_rate / rate, (len(samples), expected)
    assert dominant_hz(samples) * decoded_rate / SAMPLE_RATE == pytest.approx(440.0, rel=0.03)


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
def test_pcm_at_a_rate_is_the_24k_stream_resampled_and_whole_samples(rate):
    signal = tone(2.0)
    pieces, tail = encode("pcm", signal, rate)
    assert all(len(p) % 2 == 0 for p in pieces + [tail])  # every chunk holds whole 16-bit samples
    got = np.frombuffer(b"".join(pieces) + tail, dtype="<i2").astype(np.float32) / 32767.0
    want = resampled(signal, rate)
    assert len(got) == len(want)
    assert np.abs(got - want).max() <= 2.0 / 32767  # the same resampler, streamed: int16 rounding apart


@pytest.mark.parametrize("fmt", ["mulaw", "alaw"])
def test_g711_is_8k_by_default_and_the_8k_pcm_within_its_quantisation(fmt):
    signal = tone(2.0, noise=0.05)
    pieces, tail = encode(fmt, signal, None)
    data = b"".join(pieces) + tail
    assert len(data) == len(resampled(signal, 8000))  # one byte per sample, 8000 a second
    got, rate = read(fmt, data, 8000)
    want = resampled(signal, 8000)
    assert rate == 8000 and len(got) == len(want)
    snr_db = 10 * np.log10(np.sum(want**2) / np.sum((got - want) ** 2))
    assert snr_db > 30, snr_db  # G.711's companding keeps about 38 dB on speech-level signals
    assert make_encoder(fmt).content_type == ("audio/PCMU" if fmt == "mulaw" else "audio/PCMA") + ";rate=8000"


def test_rates_a_format_does_not_take_are_refused_naming_the_field():
    for fmt, rate in (("opus", 44100), ("opus", 22050)):
        with pytest.raises(ValueError, match="sample_rate 44100|sample_rate 22050"):
            make_encoder(fmt, sample_rate=rate)
    assert output_rate("opus", None) == 48_000 and output_rate("mulaw", None) == 8000
    assert output_rate("mp3", None) == SAMPLE_RATE and output_rate("wav", 16000) == 16000
    assert content_type("wav", 8000) == "audio/wav"
    assert set(SAMPLE_RATES) == {8000, 16000, 22050, 24000, 44100, 48000}


def test_speed_and_rate_together():
    signal = tone(2.0, noise=0.0)
    enc = make_encoder("pcm", 2.0, 8000)
    data = enc.encode(signal) + enc.flush()
    got = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767.0
    assert abs(len(got) - 8000) <= 0.03 * 8000  # 2 s at double speed: 1 s of 8 kHz
    assert dominant_hz(got) * 8000 / SAMPLE_RATE == pytest.approx(440.0, rel=0.03)  # tempo, not pitch
