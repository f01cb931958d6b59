"""The sampler draws from softmax(logits / T) restricted to the top-k, and nothing else, for
every row of a batch with its own settings (the per-row path the engine runs).

Statistical, with fixed seeds (deterministic: the counter-based RNG has no hidden state): every
batched call mixes rows of four (temperature, top-k) settings, each with its own logits and
seed, at the real vocabulary size (2051), NUM_DRAWS draws per setting. The verdict pools a
chi-square test over the four settings; the controls run the same verdict on deliberately
wrong samplers (top-k off by one; Gumbel noise scaled by 10 %) and must reject each.
"""

import dataclasses

import pytest
import torch
from scipy import stats

from models.runner.sampler import RowSampling, gumbel_noise, sample, uniform

VOCAB = 2051
NUM_DRAWS = 10_000  # per setting: the noise-scaled control is rejected at p < 1e-6, the off-by-one one by draws outside the top-k
CHUNK = 8_000  # rows per batched call: [CHUNK, VOCAB] float32 scores stay small
PAIRS = [(0.9, 50), (1.0, 5), (0.5, 200), (2.0, 2051)]  # (temperature, top-k), mixed in every call
_cache: dict = {}


def _logits(top_k: int) -> torch.Tensor:
    return torch.randn(VOCAB, generator=torch.Generator().manual_seed(top_k)) * 2.0


def _top_k_off_by_one(logits, rows, codebook):
    """Wrong on purpose: samples among the k + 1 likeliest codes."""
    wider = dataclasses.replace(rows, top_k=(rows.top_k + 1).clamp(max=VOCAB), max_top_k=min(rows.max_top_k + 1, VOCAB))
    return sample(logits, wider, codebook)


def _noise_scaled(logits, rows, codebook):
    """Wrong on purpose: the sampler's own steps with the Gumbel noise 10 % too strong."""
    logits = logits.float()
    kth = torch.topk(logits, rows.max_top_k, dim=-1).values.gather(1, (rows.top_k - 1)[:, None])
    masked = logits.masked_fill(logits < kth, float("-inf"))
    noise = 1.1 * gumbel_noise(rows.key, rows.counter + codebook, logits.shape[-1])
    return (masked / rows.temperature[:, None] + noise).argmax(dim=-1)


SAMPLERS = {"sample": sample, "top_k_off_by_one": _top_k_off_by_one, "noise_scaled": _noise_scaled}


def _draws(sampler: str) -> dict[tuple[float, int], torch.Tensor]:
    """NUM_DRAWS ids per setting, every call a batch of rows cycling through the settings,
    each row with its own counter (as frames and codebooks are); computed once per sampler."""
    if sampler not in _cache:
        n_pairs = len(PAIRS)
        logits = torch.stack([_logits(k) for _, k in PAIRS])  # [4, V]
        temps = torch.tensor([t for t, _ in PAIRS])
        top_ks = torch.tensor([k for _, k in PAIRS])
        keys = torch.tensor([0x1234_5678 + k for _, k in PAIRS])
        out = []
        for start in range(0, NUM_DRAWS * n_pairs, CHUNK):
            index = torch.arange(start, start + CHUNK)
            pair = index % n_pairs
            rows = RowSampling(temps[pair], top_ks[pair], keys[pair], index // n_pairs, int(top_ks.max()))
            out.append(SAMPLERS[sampler](logits[pair], rows, 0))
        draws = torch.cat(out)
        _cache[sampler] = {p: draws[i::n_pairs] for i, p in enumerate(PAIRS)}
    return _cache[sampler]


def _verdict(draws: dict[tuple[float, int], torch.Tensor]) -> tuple[int, float]:
    """(draws outside their top-k, the p-value of a chi-square test pooled over the settings:
    the statistics and degrees of freedom of each setting's test summed)."""
    outside, chi2, dof = 0, 0.0, 0
    for (temperature, top_k), ids in draws.items():
        logits = _logits(top_k)
        allowed = torch.topk(logits, top_k).indices
        is_allowed = torch.zeros(VOCAB, dtype=torch.bool)
        is_allowed[allowed] = True
        outside += int((~is_allowed[ids]).sum())
        expected = torch.softmax(logits[allowed].double() / temperature, dim=0) * len(ids)
        counts = torch.bincount(ids, minlength=VOCAB)[allowed].double()
        # Pool the rare tail into one category so every expected count is >= 5 (chi-square validity).
        order = torch.argsort(expected, descending=True)
        expected, counts = expected[order], counts[order]
        keep = int((expected >= 5).sum())
        exp_bins = torch.cat([expected[:keep], expected[keep:].sum(0, keepdim=True)])
        obs_bins = torch.cat([counts[:keep], counts[keep:].sum(0, keepdim=True)])
        if exp_bins[-1] < 5:  # merge a tiny tail into the last kept bin
            exp_bins = torch.cat([exp_bins[:-2], exp_bins[-2:].sum(0, keepdim=True)])
            obs_bins = torch.cat([obs_bins[:-2], obs_bins[-2:].sum(0, keepdim=True)])
        chi2 += float(((obs_bins - exp_bins) ** 2 / exp_bins).sum())
        dof += len(exp_bins) - 1
    return outside, float(stats.chi2.sf(chi2, dof))


@pytest.mark.slow  # ~15 s on 2 cores: 40k rows x 2051 hashed noise values per sampler
def test_batched_rows_of_mixed_settings_follow_their_own_softmax():
    outside, p = _verdict(_draws("sample"))
    assert outside == 0, "a draw fell outside its row's top-k"
    assert p > 1e-3, f"draws do not follow softmax(logits/T) over each row's top-k: pooled p={p:.2e}"


@pytest.mark.slow
@pytest.mark.parametrize("wrong", ["top_k_off_by_one", "noise_scaled"])
def test_control_the_same_verdict_rejects_a_wrong_sampler(wrong):
    outside, p = _verdict(_draws(wrong))
    assert outside > 0 or p < 1e-6, f"{wrong} passed: outside={outside}, p={p:.2e}"


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
