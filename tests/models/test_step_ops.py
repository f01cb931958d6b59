"""The step's fewer ops compute the same numbers as the many they replaced: a frame's noise
drawn at once equals each codebook's drawn on its own, bit for bit; a prepared frame's draw
equals the one-codebook draw; RoPE in four ops equals transformers' apply_rotary_pos_emb."""

import dataclasses

import pytest
import torch
from transformers.models.csm.modeling_csm import apply_rotary_pos_emb

from models.runner.attention import rotate
from models.runner.sampler import RowSampling, frame_noise, gumbel_noise, mix32, prepare_frame, sample, uniform, vocab_hash

VOCAB, CODEBOOKS = 2051, 32


def _noise_as_drawn_before(keys, counters, vocab_size):
    """The per-codebook noise as the sampler drew it before frames were drawn at once
    (commit 7d09d39), written out: the reference the frame's noise must equal."""
    row = mix32(keys ^ mix32(counters))  # [B]
    vocab = torch.arange(vocab_size, dtype=torch.int64)
    bits = mix32(row[:, None] ^ mix32(vocab + 0x5BD1E995)[None, :])  # [B, V]
    return -torch.log(-torch.log(uniform(bits)))


def _rows(n: int = 5) -> RowSampling:
    return RowSampling(temperature=torch.tensor([0.9, 0.0, 1.3, 0.5, 2.0])[:n],
                       top_k=torch.tensor([50, 5, 2051, 1, 300])[:n],
                       key=torch.tensor([7, 2**32 - 1, 0, 123456789, 99])[:n],
                       counter=torch.tensor([0, 32, 64 * 1000, 2**20, 5 * 32])[:n], max_top_k=2051)


def test_a_frames_noise_at_once_is_each_codebooks_noise_bit_for_bit():
    rows = _rows()
    at_once = frame_noise(rows.key, rows.counter, CODEBOOKS, vocab_hash(VOCAB, "cpu"))  # [B, C, V]
    before = torch.stack([_noise_as_drawn_before(rows.key, rows.counter + c, VOCAB) for c in range(CODEBOOKS)], dim=1)
    assert at_once.shape == (5, CODEBOOKS, VOCAB) and torch.isfinite(at_once).all()
    assert torch.equal(at_once, before)
    assert torch.equal(gumbel_noise(rows.key, rows.counter + 3, VOCAB), before[:, 3])
    assert not torch.equal(at_once[:, 0], at_once[:, 1])  # codebooks do differ


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_prepared_frames_draws_equal_one_codebook_draws(dtype):
    """What the engine runs (prepare_frame once, sample per codebook) against sample given the
    rows alone (which the statistical test checks), on logits of the model's dtype; a greedy
    row takes the argmax, and a row of top-k 1 its one code."""
    rows = _rows()
    logits = (torch.randn(CODEBOOKS, 5, VOCAB, generator=torch.Generator().manual_seed(1)) * 3).to(dtype)
    frame = prepare_frame(rows, CODEBOOKS, vocab_hash(VOCAB, "cpu"))
    for c in range(CODEBOOKS):
        prepared, alone = sample(logits[c], frame, c), sample(logits[c], rows, c)
        assert torch.equal(prepared, alone), c
        assert torch.equal(sample(logits[c], frame, torch.tensor(c)), prepared)  # the compiled step's 0-d index
        assert prepared[1] == logits[c, 1].float().argmax() and prepared[3] == logits[c, 3].float().argmax()
    shuffled = dataclasses.replace(rows, key=rows.key.flip(0), counter=rows.counter.flip(0))
    assert not torch.equal(prepare_frame(shuffled, CODEBOOKS, vocab_hash(VOCAB, "cpu")).noise, frame.noise)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_in_four_ops_equals_transformers(dtype):
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(3, 8, 5, 16, generator=g).to(dtype), torch.randn(3, 2, 5, 16, generator=g).to(dtype)
    cos, sin = torch.randn(3, 5, 16, generator=g).to(dtype), torch.randn(3, 5, 16, generator=g).to(dtype)
    signed = torch.cat([-sin[..., :8], sin[..., 8:]], dim=-1)
    want_q, want_k = apply_rotary_pos_emb(q, k, cos, sin)
    got = rotate(torch.cat([q, k], dim=1), cos[:, None], signed[:, None])
    assert torch.equal(got[:, :8], want_q) and torch.equal(got[:, 8:], want_k)
