"""Per-row sampling with a counter-based RNG: temperature, top-k, seed, no host sync.

A row's random numbers are a hash of (its request's seed, its frame index, the codebook,
the vocabulary index), so a request's codes depend only on its own inputs and seed: not on
which rows share its batch, nor on when it joined. Sampling is Gumbel-max (argmax of
logits/T + Gumbel noise), which draws exactly from softmax(logits/T) restricted to the
top-k, like transformers' temperature + top-k + multinomial. Temperature 0 is greedy.
The noise is always finite (`uniform` stays strictly inside (0, 1)), so no draw can leave
the top-k; tests/models/test_sampler.py checks both over 100k+ draws per setting. All ops
are plain tensor ops: graph-capturable, nothing read back to the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_MASK32 = 0xFFFFFFFF
# Multipliers below 2**31 keep every product of a 32-bit value under 2**63 (no int64 overflow).
_MULS = (0x7FEB352D, 0x2C1B3C6D, 0x297A2D39)


@dataclass(frozen=True)
class RowSampling:
    """How each row of a batch samples one frame. All [B] tensors on the device:
    `temperature` float32, `top_k` int64, `key` int64 (the request's seed folded to 32 bits,
    `seed_key`), `counter` int64 (frame index x codebooks: codebook c draws at counter + c);
    `max_top_k` is top_k.max(), known on the host (topk needs a static k)."""

    temperature: torch.Tensor
    top_k: torch.Tensor
    key: torch.Tensor
    counter: torch.Tensor
    max_top_k: int


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xorshift-multiply rounds) on int64 tensors holding 32-bit values."""
    for m in _MULS:
        x = x ^ (x >> 16)
        x = (x * m) & _MASK32
    return x ^ (x >> 16)


def seed_key(seed: int) -> int:
    """Fold a 63-bit seed into a 32-bit row key (host side, once per request)."""
    lo = torch.tensor(seed & _MASK32, dtype=torch.int64)
    hi = torch.tensor((seed >> 32) & _MASK32, dtype=torch.int64)
    return int(mix32(mix32(hi) ^ lo))


def gumbel_noise(keys: torch.Tensor, counters: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[B, V] float32 Gumbel(0, 1) noise from row keys [B] and per-row counters [B]."""
    row = mix32(keys ^ mix32(counters))  # [B]
    vocab = torch.arange(vocab_size, device=keys.device, dtype=torch.int64)
    bits = mix32(row[:, None] ^ mix32(vocab + 0x5BD1E995)[None, :])  # [B, V]
    return -torch.log(-torch.log(uniform(bits)))


def uniform(bits: torch.Tensor) -> torch.Tensor:
    """32-bit hash values -> float32 uniforms strictly inside (0, 1): the top 23 bits, centred
    in their cell. 23, not 24: float32 has 24 significant bits, so (2**24 - 0.5) / 2**24 rounds
    to exactly 1.0, where -log(-log(u)) is +inf and that code would win whatever its logit
    (and outside the top-k its score is -inf + inf = NaN, which argmax also picks). With 23
    bits the extremes are 2**-24 and 1 - 2**-24, both exact, and the noise stays finite
    (at most ~16.6)."""
    return ((bits >> 9).to(torch.float32) + 0.5) * (1.0 / (1 << 23))


def sample(logits: torch.Tensor, rows: RowSampling, codebook: int | torch.Tensor) -> torch.Tensor:
    """Sample one id per row for `codebook` (an int, or a 0-d tensor in a compiled step).
    logits [B, V]. Returns [B] int64."""
    logits = logits.float()
    kth = torch.topk(logits, rows.max_top_k, dim=-1).values.gather(1, (rows.top_k - 1)[:, None])  # [B, 1]
    masked = logits.masked_fill(logits < kth, float("-inf"))
    is_greedy = rows.temperature <= 0
    inv_t = torch.where(is_greedy, torch.ones_like(rows.temperature), 1.0 / rows.temperature)[:, None]
    noise = gumbel_noise(rows.key, rows.counter + codebook, logits.shape[-1])
    scores = torch.where(is_greedy[:, None], logits, masked * inv_t + noise)
    return scores.argmax(dim=-1)
