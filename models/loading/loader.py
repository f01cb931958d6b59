"""Load a CSM model: a built-in name, or a local checkpoint directory in the Hugging Face
layout (config.json, *.safetensors, tokenizer files, generation_config.json). Never touches
the network."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.prompt import SpecialIds
from .builtin import BUILTIN_MODELS, builtin_model, quiet_token_id_check
from .device import resolve_device, resolve_dtype

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    name: str
    model: object  # CsmForConditionalGeneration, eval mode, on `device`
    tokenizer: object
    special_ids: SpecialIds
    device: torch.device
    dtype: torch.dtype
    load_s: float


def _special_ids(model, tokenizer) -> SpecialIds:
    cfg = model.config
    return SpecialIds(
        bos=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else cfg.bos_token_id,
        eos=tokenizer.convert_tokens_to_ids("<|end_of_text|>"),
        audio=cfg.audio_token_id,
        audio_eos=cfg.audio_eos_token_id,
    )


def _load_checkpoint(path: Path, dtype: torch.dtype):
    from transformers import AutoTokenizer, CsmForConditionalGeneration

    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model: {str(path)!r} is neither a built-in name {BUILTIN_MODELS} nor a checkpoint "
            "directory with a config.json"
        )
    with quiet_token_id_check():  # CSM-1B's own config trips transformers' check (see builtin.py)
        model = CsmForConditionalGeneration.from_pretrained(path, dtype=dtype, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model.eval(), tokenizer


def load_model(name: str, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Load `name` (built-in or a local directory) onto the resolved device and dtype."""
    t0 = time.perf_counter()
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if name in BUILTIN_MODELS:
        model, tokenizer = builtin_model(name, dt)
    else:
        model, tokenizer = _load_checkpoint(Path(name).expanduser(), dt)
    model.to(dev)
    # Mimi stays float32: its output is continuous audio, and bf16 rounding in a batched decode
    # depends on which other streams share the batch (same seed must give the same audio).
    model.codec_model.float()
    special = _special_ids(model, tokenizer)
    load_s = time.perf_counter() - t0
    log.info("loaded %s on %s as %s in %.1f s", name, dev, dt, load_s)
    return LoadedModel(name, model, tokenizer, special, dev, dt, load_s)


def save_model(loaded_or_model, tokenizer, path: str | Path) -> None:
    """Write a model and tokenizer in the Hugging Face layout (what load_model reads back)."""
    loaded_or_model.save_pretrained(path)
    tokenizer.save_pretrained(path)
