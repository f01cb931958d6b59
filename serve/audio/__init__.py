"""Audio for the speech API on PyAV (ffmpeg): the formats and rates offered (formats.py), the
streaming encoders (encode.py) and steps they share (steps.py), and decoding uploads (decode.py)."""

from .decode import AudioDecodeError, decode_audio
from .encode import AudioEncoder, as_mono_float, make_encoder
from .formats import (
    CONTENT_TYPES,
    FORMATS,
    MAX_SPEED,
    MIN_SPEED,
    SAMPLE_RATE,
    SAMPLE_RATES,
    ResponseFormat,
    SampleRate,
    content_type,
    output_rate,
)
from .steps import Resample

__all__ = ["CONTENT_TYPES", "FORMATS", "MAX_SPEED", "MIN_SPEED", "SAMPLE_RATE", "SAMPLE_RATES", "AudioDecodeError",
           "AudioEncoder", "Resample", "ResponseFormat", "SampleRate", "as_mono_float", "content_type",
           "decode_audio", "make_encoder", "output_rate"]
