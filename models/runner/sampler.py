"""Per-row sampling with a counter-based RNG: temperature, top-k, seed, no host sync.

A row's random numbers are a hash of (its request's seed, its frame index, the codebook,
the vocabulary index), so a request's codes depend only on its own inputs and seed: not on
which rows share its batch, nor on when it joined. Sampling is Gumbel-max (argmax of
logits/T + Gumbel noise), which draws exactly from softmax(logits/T) restricted to the
top-k, like transformers' temperature + top-k + multinomial. Temperature 0 is greedy.
The noise is always finite (`uniform` stays strictly inside (0, 1)), so no draw can leave
the top-k; tests/models/test_sampler.py checks both over 100k+ draws per setting. All ops
are plain tensor ops: graph-capturable, nothing read back to the host.

A frame draws its noise once for all 32 codebooks (`prepare_frame`: one hash over
[rows, codebooks, vocabulary], in place), then each codebook's draw is seven ops (`sample`).
The hash is counter-based, so the noise is the same numbers, codebook by codebook, as
drawing each codebook's on its own (`gumbel_noise`): a seed says what it said before.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

_MASK32 = 0xFFFFFFFF
# Multipliers below 2**31 keep every product of a 32-bit value under 2**63 (no int64 overflow).
_MULS = (0x7FEB352D, 0x2C1B3C6D, 0x297A2D39)
_VOCAB_SALT = 0x5BD1E995


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


@dataclass(frozen=True)
class FrameDraws:
    """A frame's sampling, prepared once for all its codebooks (`prepare_frame`): `inv_t`
    [B, 1] float32 (1/T; 1 on greedy rows), `kth` [B] int64 (where each row's top-k threshold
    sits in the flattened [B, max_top_k] top values: row * max_top_k + top_k - 1), `noise`
    [B, C, V] float32 (codebook c's Gumbel noise at [:, c]; 0 on greedy rows, whose draw is
    then the argmax)."""

    inv_t: torch.Tensor
    kth: torch.Tensor
    max_top_k: int
    noise: torch.Tensor


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xorshift-multiply rounds) on int64 tensors holding 32-bit values."""
    for m in _MULS:
        x = x ^ (x >> 16)
        x = (x * m) & _MASK32
    return x ^ (x >> 16)


def _mix32_(x: torch.Tensor) -> torch.Tensor:
    """mix32 in place on x (a tensor the caller owns): the same numbers, no new [B, C, V] buffers."""
    for m in _MULS:
        x ^= x >> 16
        x *= m
        x &= _MASK32
    x ^= x >> 16
    return x


def seed_key(seed: int) -> int:
    """Fold a 63-bit seed into a 32-bit row key (host side, once per request)."""
    lo = torch.tensor(seed & _MASK32, dtype=torch.int64)
    hi = torch.tensor((seed >> 32) & _MASK32, dtype=torch.int64)
    return int(mix32(mix32(hi) ^ lo))


def vocab_hash(vocab_size: int, device) -> torch.Tensor:
    """[V] int64: the vocabulary half of the noise's hash, the same for every draw (compute once)."""
    return mix32(torch.arange(vocab_size, device=device, dtype=torch.int64) + _VOCAB_SALT)


def frame_noise(keys: torch.Tensor, counters: torch.Tensor, num_codebooks: int, vocab: torch.Tensor) -> torch.Tensor:
    """[B, C, V] float32 Gumbel(0, 1) noise for codebooks counter + 0 .. C-1 of each row, from
    row keys [B], counters [B] and `vocab_hash` [V]."""
    codebooks = torch.arange(num_codebooks, device=keys.device, dtype=torch.int64)
    row = mix32(keys[:, None] ^ mix32(counters[:, None] + codebooks))  # [B, C]
    bits = _mix32_(row[:, :, None] ^ vocab)  # [B, C, V]
    bits >>= 9  # uniform(), in place: the top 23 bits, centred in their cell
    u = bits.to(torch.float32).add_(0.5).mul_(1.0 / (1 << 23))
    return u.log_().neg_().log_().neg_()  # -log(-log(u))


def gumbel_noise(keys: torch.Tensor, counters: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[B, V] float32 Gumbel(0, 1) noise from row keys [B] and per-row counters [B]."""
    return frame_noise(keys, counters, 1, vocab_hash(vocab_size, keys.device))[:, 0]


def uniform(bits: torch.Tensor) -> torch.Tensor:
    """32-bit hash values -> float32 uniforms strictly inside (0, 1): the top 23 bits, centred
    in their cell. 23, not 24: float32 has 24 significant bits, so (2**24 - 0.5) / 2**24 rounds
    to exactly 1.0, where -log(-log(u)) is +inf and that code would win whatever its logit
    (and outside the top-k its score is -inf + inf = NaN, which argmax also picks). With 23
    bits the extremes are 2**-24 and 1 - 2**-24, both exact, and the noise stays finite
    (at most ~16.6). (`frame_noise` computes the same in place.)"""
    return ((bits >> 9).to(torch.float32) + 0.5) * (1.0 / (1 << 23))


def prepare_frame(rows: RowSampling, num_codebooks: int, vocab: torch.Tensor) -> FrameDraws:
    """Everything a frame's draws share, once: 1/T, the top-k threshold's index, and the noise
    of all `num_codebooks` codebooks (`vocab`: vocab_hash)."""
    is_greedy = rows.temperature <= 0
    inv_t = torch.where(is_greedy, torch.ones_like(rows.temperature), 1.0 / rows.temperature)[:, None]
    noise = frame_noise(rows.key, rows.counter, num_codebooks, vocab).masked_fill_(is_greedy[:, None, None], 0.0)
    first = torch.arange(0, rows.top_k.shape[0] * rows.max_top_k, rows.max_top_k, device=rows.top_k.device)
    return FrameDraws(inv_t, first + rows.top_k - 1, rows.max_top_k, noise)


def sample(logits: torch.Tensor, rows: FrameDraws | RowSampling, codebook: int | torch.Tensor) -> torch.Tensor:
    """Sample one id per row for `codebook` (an int, or a 0-d tensor in a compiled step) of a
    prepared frame. logits [B, V] (any float dtype: compared as they are, scaled in float32).
    Returns [B] int64. Given RowSampling alone, this codebook's noise is drawn first (the
    numbers a prepared frame holds for it)."""
    if isinstance(rows, RowSampling):
        shifted = dataclasses.replace(rows, counter=rows.counter + codebook)
        rows, codebook = prepare_frame(shifted, 1, vocab_hash(logits.shape[-1], logits.device)), 0
    if isinstance(codebook, torch.Tensor):  # index_select, not [:, p]: that would read p on the host
        noise = rows.noise.index_select(1, codebook.view(1))[:, 0]
    else:
        noise = rows.noise[:, codebook]  # [B, V]
    kth = torch.topk(logits, rows.max_top_k, dim=-1).values.view(-1).index_select(0, rows.kth)[:, None]  # [B, 1]
    scores = (logits * rows.inv_t + noise).masked_fill_(logits < kth, float("-inf"))  # [B, V] float32
    return scores.argmax(dim=-1)
