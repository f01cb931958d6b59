"""Whole-clip Mimi encoding: a voice's reference audio becomes context frames, once per voice."""

from __future__ import annotations

import numpy as np
import torch


@torch.inference_mode()
def encode_clip(codec, pcm: np.ndarray) -> tuple[tuple[int, ...], ...]:
    """Mimi codes of a whole 24 kHz mono clip, as frames of 32 codes."""
    param = next(codec.parameters())
    wave = torch.as_tensor(np.asarray(pcm, dtype=np.float32), device=param.device).to(param.dtype)
    codes = codec.encode(wave[None, None]).audio_codes[0]  # [32, frames]
    return tuple(map(tuple, codes.T.tolist()))
