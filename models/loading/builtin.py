"""Built-in models that need no files: seeded random weights, offline byte-level tokenizers.

- `csm-tiny`: the CSM architecture at toy sizes (32 codebooks of 2048, real Mimi layout);
  starts in about a second on CPU, identical on every machine. It does not speak.
- `csm-1b-random`: the full CSM-1B architecture (backbone 16x2048, depth decoder 4x1024,
  Mimi with 32 codebooks) with random weights: costs what the real model costs.

The checkpoint's llama3 RoPE scaling (factor 32) is kept on both; the frequencies it gives
do not change the cost. The tokenizer is byte-level (one token per UTF-8 byte) with the
Llama-3 special tokens at their real ids, so prompts are longer than with the real Llama-3
tokenizer (about 4x) but every code path is the same.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import CsmConfig, CsmDepthDecoderConfig, MimiConfig, PreTrainedTokenizerFast

BUILTIN_MODELS = ("csm-tiny", "csm-1b-random")
SEEDS = {"csm-tiny": 1234, "csm-1b-random": 5678}
SPECIAL_TOKENS = ("<|begin_of_text|>", "<|end_of_text|>", "<|AUDIO|>", "<|audio_eos|>")


def _rope(original_max: int) -> dict:
    return {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": original_max,
    }


def tiny_config() -> CsmConfig:
    depth = CsmDepthDecoderConfig(
        backbone_hidden_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_parameters=_rope(16),
    )
    codec = MimiConfig(
        hidden_size=32,
        num_filters=4,
        upsample_groups=32,
        num_hidden_layers=2,
        intermediate_size=64,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        codebook_dim=16,
        vector_quantization_hidden_dimension=16,
    )
    return CsmConfig(
        text_vocab_size=260,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=256,
        pad_token_id=258,
        audio_token_id=258,
        audio_eos_token_id=259,
        rope_parameters=_rope(1024),
        depth_decoder_config=depth,
        codec_config=codec,
    )


def csm_1b_config() -> CsmConfig:
    """CSM-1B sizes (transformers' defaults are csm-1b's: text vocabulary 128256, special ids
    128000-128003) with the checkpoint's RoPE scaling."""
    with quiet_token_id_check():
        return CsmConfig(
            rope_parameters=_rope(1024),
            depth_decoder_config=CsmDepthDecoderConfig(rope_parameters=_rope(16)),
            codec_config=MimiConfig(),
        )


@contextlib.contextmanager
def quiet_token_id_check():
    """transformers' CsmConfig checks the TEXT special ids (bos 128000, audio 128002, ...)
    against the AUDIO vocabulary (32 x 2051 = 65632), so CSM-1B's own config warns that
    they are "outside the vocabulary". They are inside the text vocabulary (128256), which is
    what they index: a false positive, silenced here (and for checkpoints, see loader.py)."""
    log = logging.getLogger("transformers.models.csm.configuration_csm")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def builtin_config(name: str) -> CsmConfig:
    return tiny_config() if name == "csm-tiny" else csm_1b_config()


def byte_tokenizer(first_special_id: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE with no merges; specials (bos, eos, audio, audio_eos) from the given id."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    for i, tok in enumerate(SPECIAL_TOKENS):
        vocab[tok] = first_special_id + i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL_TOKENS[0],
        eos_token=SPECIAL_TOKENS[1],
        pad_token=SPECIAL_TOKENS[2],
        extra_special_tokens={"audio_token": SPECIAL_TOKENS[2], "audio_eos_token": SPECIAL_TOKENS[3]},
    )


def _randomize_codebooks(codec) -> None:
    """Mimi's codebooks start as zeros (trained checkpoints fill them), which would make every
    code decode to the same audio and every clip encode to code 0. Random centroids make
    decoded audio depend on the codes, as with real weights."""
    from transformers.models.mimi.modeling_mimi import MimiEuclideanCodebook

    for module in codec.modules():
        if isinstance(module, MimiEuclideanCodebook):
            module.embed_sum.normal_()
            module._embed = None


def builtin_model(name: str, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) with seeded random weights; same bytes on every machine and run."""
    from transformers import CsmForConditionalGeneration

    config = builtin_config(name)
    with torch.random.fork_rng(devices=[]), quiet_token_id_check():
        torch.manual_seed(SEEDS[name])
        model = CsmForConditionalGeneration(config)
        _randomize_codebooks(model.codec_model)
    model.to(dtype).eval()
    tokenizer = byte_tokenizer(config.bos_token_id)
    return model, tokenizer
