"""serve.audio: streaming encoders for every response format, tempo, and decoding, checked with real PyAV."""

import io
import struct
import subprocess
import sys
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve.audio import CONTENT_TYPES, FORMATS, SAMPLE_RATE, AudioDecodeError, decode_audio, make_encoder

SR = SAMPLE_RATE
CHUNKS = (1920, 500, 7000)
LOSSY = ("mp3", "aac", "opus")
PHONE = ("mulaw", "alaw")  # G.711 at 8 kHz by default: band-limited and companded
# Extra decoded samples allowed on top of 3% of the duration: encoder priming and last-frame padding that
# the container does not record (MP3 without a LAME tag: encoder + decoder delay and a frame; ADTS AAC:
# 1024 priming samples and a 1024-sample frame). Ogg Opus records pre-skip and end trim, so it needs none.
SLACK = {"mp3": 2 * 1152, "aac": 2 * 1024}
MAGIC = {"wav": b"RIFF", "flac": b"fLaC", "opus": b"OggS", "mp3": b"ID3"}


def tone(seconds: float, freq: float = 440.0, noise: float = 0.02, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    return (0.5 * np.sin(2 * np.pi * freq * t) + noise * rng.standard_normal(t.size)).astype(np.float32)


def chunked(signal: np.ndarray, sizes=CHUNKS) -> list[np.ndarray]:
    parts, start, k = [], 0, 0
    while start < len(signal):
        size = sizes[k % len(sizes)]
        parts.append(signal[start : start + size])
        start, k = start + size, k + 1
    return parts


def stream(fmt: str, signal: np.ndarray, sizes=CHUNKS, speed: float = 1.0) -> tuple[list[bytes], bytes]:
    """What each encode() call returned, and what flush() returned."""
    enc = make_encoder(fmt, speed)
    pieces = [enc.encode(part) for part in chunked(signal, sizes)]
    return pieces, enc.flush()


def encode_all(fmt: str, signal: np.ndarray, sizes=CHUNKS, speed: float = 1.0) -> bytes:
    pieces, tail = stream(fmt, signal, sizes, speed)
    return b"".join(pieces) + tail


def decode(fmt: str, data: bytes, rate: int = 8000) -> np.ndarray:
    """Back to 24 kHz float: raw formats have nothing for a demuxer to probe (G.711 is read by
    PyAV's raw demuxer at `rate`, then resampled as uploads are)."""
    if fmt == "pcm":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767.0
    if fmt in PHONE:
        with av.open(io.BytesIO(data), format=fmt, options={"sample_rate": str(rate)}) as raw:
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SR)
            frames = [f for packet in raw.decode(audio=0) for f in resampler.resample(packet)]
            frames += resampler.resample(None)
        return np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
    return decode_audio(data)


def aligned_corr(ref: np.ndarray, out: np.ndarray, max_lag: int = 3000) -> float:
    """Pearson correlation of ``out`` with ``ref`` after shifting by the best lag (encoder delay)."""
    size = 1 << (len(ref) + len(out)).bit_length()
    xc = np.fft.irfft(np.fft.rfft(out, size) * np.conj(np.fft.rfft(ref, size)), size)
    lags = np.arange(-max_lag, max_lag + 1)
    lag = int(lags[np.argmax(xc[lags])])  # negative indices wrap: negative lags
    a, b = (ref, out[lag:]) if lag >= 0 else (ref[-lag:], out)
    m = min(len(a), len(b))
    return float(np.corrcoef(a[:m], b[:m])[0, 1])


def dominant_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum)) * SR / len(x)


def assert_duration(fmt: str, got: int, expected: float) -> None:
    slack = 0.03 * expected + SLACK.get(fmt, 0)
    assert abs(got - expected) <= slack, f"{fmt}: {got} samples decoded, expected about {expected:.0f}"


def pyav_file(container: str, codec: str, rate: int, layout: str, planes: np.ndarray) -> bytes:
    """Encode float planes (channels, samples) at ``rate`` into ``container`` with PyAV, seekable output."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        stream_ = out.add_stream(codec, rate=rate)
        stream_.codec_context.layout = layout
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planes, dtype=np.float32), format="fltp", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        out.mux(stream_.encode(frame))
        out.mux(stream_.encode(None))
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- encoding


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip(fmt):
    signal = tone(1.5)
    data = encode_all(fmt, signal)
    if fmt in MAGIC:
        assert data.startswith(MAGIC[fmt])
    if fmt == "aac":
        assert data[0] == 0xFF and data[1] & 0xF0 == 0xF0  # ADTS sync word
    if fmt == "opus":
        assert b"OpusHead" in data[:100]
    decoded = decode(fmt, data)
    if fmt in LOSSY + PHONE:
        assert_duration(fmt, len(decoded), len(signal))
        assert aligned_corr(signal, decoded) > 0.9
    else:  # lossless up to int16 quantization, sample for sample
        assert len(decoded) == len(signal)
        assert np.abs(decoded - signal).max() <= 1.5 / 32767


def test_pcm_is_headerless_int16_little_endian():
    samples = np.array([0.0, 1.0, -1.0, 0.5, 2.0, -3.0, np.nan], dtype=np.float32)
    data = make_encoder("pcm").encode(samples)
    assert len(data) == 2 * len(samples)
    assert data[2:4] == b"\xff\x7f"  # 32767, low byte first
    assert np.frombuffer(data, "<i2").tolist() == [0, 32767, -32767, 16384, 32767, -32767, 0]
    signal = tone(1.0)
    data = encode_all("pcm", signal)
    assert len(data) == 2 * len(signal)
    expected = np.rint(np.clip(signal, -1, 1) * 32767).astype("<i2")
    assert np.array_equal(np.frombuffer(data, "<i2"), expected)


def test_wav_header_is_ffmpegs_streaming_header():
    data = encode_all("wav", tone(0.5))
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    # Written to a non-seekable sink, so the muxer could not go back to fill in the sizes.
    assert struct.unpack("<I", data[4:8])[0] == 0xFFFFFFFF


@pytest.mark.parametrize("fmt", FORMATS)
def test_bytes_stream_during_encoding(fmt):
    signal = tone(3.0)
    pieces, tail = stream(fmt, signal, sizes=(1920,))  # one Mimi frame (80 ms) at a time
    before_flush = sum(len(p) for p in pieces)
    assert before_flush >= 0.5 * (before_flush + len(tail)), "most bytes should come before flush()"
    assert sum(1 for p in pieces if p) >= len(pieces) // 4, "bytes should come out steadily"
    streamed = decode(fmt, b"".join(pieces) + tail)
    one_shot = decode(fmt, encode_all(fmt, signal, sizes=(len(signal),)))
    assert len(streamed) == len(one_shot)
    assert np.corrcoef(streamed, one_shot)[0, 1] > 0.999


@pytest.mark.parametrize("speed", [0.25, 0.5, 2.0, 4.0])
def test_speed_changes_tempo_not_pitch(speed):
    signal = tone(1.5, noise=0.0)
    pieces, tail = stream("pcm", signal, speed=speed)
    assert sum(len(p) for p in pieces) > len(tail), "the tempo filter streams too"
    out = decode("pcm", b"".join(pieces) + tail)
    assert abs(len(out) - len(signal) / speed) <= 0.03 * len(signal) / speed
    assert dominant_hz(out) == pytest.approx(440.0, rel=0.03)


@pytest.mark.parametrize("fmt", FORMATS)
def test_speed_works_with_every_format(fmt):
    signal = tone(1.5)
    assert_duration(fmt, len(decode(fmt, encode_all(fmt, signal, speed=2.0))), len(signal) / 2)


def test_speed_one_bypasses_the_filter():
    signal = tone(0.5)
    expected = np.rint(signal * 32767).astype("<i2").tobytes()
    assert encode_all("pcm", signal, speed=1.0) == expected


@pytest.mark.parametrize("fmt", ["ogg", "MP3", "", "wave"])
def test_unknown_format_is_rejected(fmt):
    with pytest.raises(ValueError, match="response_format"):
        make_encoder(fmt)


@pytest.mark.parametrize("speed", [0.2, 4.5, 0.0, -1.0, float("nan"), "fast", None])
def test_speed_out_of_range_is_rejected(speed):
    with pytest.raises(ValueError, match="speed"):
        make_encoder("mp3", speed)


def test_encoder_contract():
    assert set(CONTENT_TYPES) == set(FORMATS)
    for fmt in FORMATS:
        assert make_encoder(fmt).content_type.startswith(CONTENT_TYPES[fmt])  # G.711's with ";rate=8000"
    enc = make_encoder("wav")
    with pytest.raises(ValueError, match="1-D"):
        enc.encode(np.zeros((2, 10), dtype=np.float32))
    data = enc.encode(np.zeros(0, dtype=np.float32))
    data += enc.encode(np.full(100, 0.25, dtype=np.float64))  # other float dtypes are converted
    data += enc.flush()
    assert np.allclose(decode_audio(data), 0.25, atol=1e-4)
    assert enc.flush() == b""
    with pytest.raises(RuntimeError):
        enc.encode(np.zeros(10, dtype=np.float32))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(["pcm", "wav"]), sizes=st.lists(st.integers(0, 4000), min_size=1, max_size=12))
def test_random_chunking_decodes_like_one_shot(fmt, sizes):
    signal = tone(0.5)
    cuts = np.cumsum(sizes)
    enc = make_encoder(fmt)
    data = b"".join(enc.encode(part) for part in np.split(signal, cuts[cuts < len(signal)])) + enc.flush()
    assert np.array_equal(decode(fmt, data), _one_shot(fmt))


@lru_cache
def _one_shot(fmt: str) -> np.ndarray:
    return decode(fmt, encode_all(fmt, tone(0.5), sizes=(SR,)))


# ---------------------------------------------------------------------------------------------- decoding


def test_decode_resamples_and_downmixes_48k_stereo_wav():
    t = np.arange(48_000) / 48_000
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    data = pyav_file("wav", "pcm_s16le", 48_000, "stereo", np.stack([left, left]))
    out = decode_audio(data)
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - SR) <= 48
    expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(len(out)) / SR)
    assert aligned_corr(expected, out, max_lag=64) > 0.99
    assert np.abs(out).max() == pytest.approx(0.5, abs=0.02)  # averaged, not summed


@pytest.mark.parametrize(("container", "codec", "rate"), [("mp4", "aac", 44_100), ("webm", "libopus", 48_000)])
def test_decode_other_containers(container, codec, rate):
    t = np.arange(rate) / rate
    data = pyav_file(container, codec, rate, "mono", (0.5 * np.sin(2 * np.pi * 440 * t))[None])
    out = decode_audio(data)
    assert_duration("aac", len(out), SR)
    assert dominant_hz(out) == pytest.approx(440.0, rel=0.02)


def test_decode_stops_early_with_max_seconds():
    data = encode_all("wav", tone(3.0))
    out = decode_audio(data, max_seconds=1.0)
    assert SR < len(out) < 2 * SR
    assert len(decode_audio(data)) == 3 * SR


@pytest.mark.parametrize(
    "data",
    [b"", b"this is definitely not audio " * 64, bytes(range(256)) * 16],
    ids=["empty", "text", "garbage"],
)
def test_decode_rejects_non_audio(data):
    with pytest.raises(AudioDecodeError):
        decode_audio(data)


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3"])
def test_decode_rejects_truncated_file(fmt):
    data = encode_all(fmt, tone(0.5))
    with pytest.raises(AudioDecodeError):
        decode_audio(data[:40])


def test_decode_rejects_file_without_audio_stream():
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="matroska") as out:
        video = out.add_stream("mjpeg", rate=1, width=16, height=16)
        video.codec_context.pix_fmt = "yuvj420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), dtype=np.uint8), format="rgb24")
        out.mux(video.encode(frame))
        out.mux(video.encode(None))
    with pytest.raises(AudioDecodeError, match="no audio"):
        decode_audio(buf.getvalue())


def test_audio_decode_error_is_a_value_error():
    assert issubclass(AudioDecodeError, ValueError)


def test_serve_audio_does_not_import_torch():
    code = "import sys, serve.audio; sys.exit('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
