"""The sampler draws from softmax(logits / T) restricted to the top-k, and nothing else.

Statistical, with fixed seeds (deterministic: the counter-based RNG has no hidden state), over
at least 100k draws per (temperature, top-k) pair, at the real vocabulary size (2051).
"""

import pytest
import torch
from scipy import stats

from models.runner.sampler import RowSampling, sample, uniform

VOCAB = 2051
NUM_DRAWS = 100_000
CHUNK = 10_000  # rows per call: [CHUNK, VOCAB] float32 scores stay small
PAIRS = [(0.9, 50), (1.0, 5), (0.5, 200), (2.0, 2051)]  # (temperature, top-k)
_cache: dict = {}


def _logits(top_k: int) -> torch.Tensor:
    return torch.randn(VOCAB, generator=torch.Generator().manual_seed(top_k)) * 2.0


def _draws(temperature: float, top_k: int) -> torch.Tensor:
    """NUM_DRAWS ids sampled from `_logits(top_k)`, each with its own counter (as frames and
    codebooks are), computed once per pair."""
    if (temperature, top_k) not in _cache:
        _cache[temperature, top_k] = _sample_many(_logits(top_k), temperature, top_k, key=0x1234_5678 + top_k)
    return _cache[temperature, top_k]


def _sample_many(logits: torch.Tensor, temperature: float, top_k: int, key: int) -> torch.Tensor:
    out = []
    for start in range(0, NUM_DRAWS, CHUNK):
        counters = torch.arange(start, start + CHUNK, dtype=torch.int64)
        n = len(counters)
        rows = RowSampling(torch.full((n,), temperature), torch.full((n,), top_k, dtype=torch.int64),
                           torch.full((n,), key, dtype=torch.int64), counters, top_k)
        out.append(sample(logits.expand(n, -1), rows, 0))
    return torch.cat(out)


@pytest.mark.slow  # ~15-25 s per pair on 2 cores
@pytest.mark.parametrize(("temperature", "top_k"), PAIRS)
def test_draws_stay_in_top_k_and_follow_the_softmax(temperature, top_k):
    logits, draws = _logits(top_k), _draws(temperature, top_k)

    allowed = torch.topk(logits, top_k).indices
    is_allowed = torch.zeros(VOCAB, dtype=torch.bool)
    is_allowed[allowed] = True
    assert int((~is_allowed[draws]).sum()) == 0, "a draw fell outside the top-k"

    probs = torch.softmax(logits[allowed].double() / temperature, dim=0)
    counts = torch.bincount(draws, minlength=VOCAB)[allowed].double()
    # Pool the rare tail into one category so every expected count is >= 5 (chi-square validity).
    expected = probs * NUM_DRAWS
    order = torch.argsort(expected, descending=True)
    expected, counts = expected[order], counts[order]
    keep = int((expected >= 5).sum())
    exp_bins = torch.cat([expected[:keep], expected[keep:].sum(0, keepdim=True)])
    obs_bins = torch.cat([counts[:keep], counts[keep:].sum(0, keepdim=True)])
    if exp_bins[-1] < 5:  # merge a tiny tail into the last kept bin
        exp_bins = torch.cat([exp_bins[:-2], exp_bins[-2:].sum(0, keepdim=True)])
        obs_bins = torch.cat([obs_bins[:-2], obs_bins[-2:].sum(0, keepdim=True)])
    result = stats.chisquare(obs_bins.numpy(), exp_bins.numpy())
    assert result.pvalue > 1e-3, f"draws do not follow softmax(logits/T) over the top-k: p={result.pvalue:.2e}"


def test_greedy_rows_take_the_argmax_whatever_the_noise():
    logits = torch.randn(64, VOCAB, generator=torch.Generator().manual_seed(3))
    ids = sample(logits, RowSampling(torch.zeros(64), torch.full((64,), 50), torch.arange(64), torch.arange(64), 50), 0)
    assert torch.equal(ids, logits.argmax(-1))


def test_uniforms_stay_strictly_inside_0_1_at_the_extremes():
    """The regression behind the statistical test: the largest hash value must map below 1.0
    (else -log(-log(u)) = +inf wins over every logit, and outside the top-k gives NaN)."""
    bits = torch.tensor([0, 1, 2**31, 2**32 - 2, 2**32 - 1], dtype=torch.int64)
    u = uniform(bits)
    assert (u > 0).all() and (u < 1).all()
    noise = -torch.log(-torch.log(u))
    assert torch.isfinite(noise).all()


@pytest.mark.slow
def test_control_the_chi_square_can_fail():
    """The statistical check rejects draws judged at the wrong temperature."""
    logits, draws = _logits(50), _draws(0.9, 50)  # drawn at T=0.9 ...
    allowed = torch.topk(logits, 50).indices
    probs = torch.softmax(logits[allowed].double() / 0.5, dim=0)  # ... judged as T=0.5
    counts = torch.bincount(draws, minlength=VOCAB)[allowed].double()
    assert stats.chisquare(counts.numpy(), (probs * NUM_DRAWS).numpy()).pvalue < 1e-6
