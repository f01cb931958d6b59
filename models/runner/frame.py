"""One audio frame per row: codebook 0 from the backbone's last hidden state (lm_head), then
codebooks 1..31 from the depth decoder, all rows in ONE batched 31-step loop.

Owns the depth decoder's KV cache (reset every frame: rows are batch positions, not slots)
and each KV slot's sampling state (seed key, temperature, top-k), with one extra row for the
scratch slot that pads captured batches. A frame's sampling (noise for all 32 codebooks,
1/T, top-k thresholds) is prepared once (sampler.prepare_frame), so each draw is a few ops.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .attention import KVAccess, decoder_layer, rope_tables
from .sampler import FrameDraws, RowSampling, prepare_frame, sample, seed_key, vocab_hash


@dataclass(frozen=True)
class DepthView:
    """What one depth step at position p reads: the first `kv_len` depth positions (with
    `mask` over them, or None when all are visible), the RoPE rows of p, codebook p's head,
    p itself (`codebook`: an int, or a 0-d tensor in the compiled step) and where codebook
    p-1's rows start in the depth embedding table (`offset`: (p - 1) x vocab size)."""

    kv_len: int
    mask: torch.Tensor | None
    cos: torch.Tensor
    sin: torch.Tensor  # signed (attention.rope_tables)
    head: torch.Tensor  # [Hd, V]
    codebook: int | torch.Tensor
    offset: int | torch.Tensor


class FrameSampler:
    def __init__(self, model, num_slots: int) -> None:
        cfg, dcfg = model.config, model.config.depth_decoder_config
        param = next(model.parameters())
        dev, dt = self.device, self.dtype = param.device, param.dtype
        self.lm_head = model.lm_head
        self.depth = model.depth_decoder.model
        self.heads = model.depth_decoder.codebooks_head.weight  # [31, Hd, V]
        self.num_codebooks = cfg.num_codebooks
        self.vocab_size = cfg.vocab_size
        self.dk_cache = torch.zeros(
            dcfg.num_hidden_layers, num_slots, dcfg.num_key_value_heads, cfg.num_codebooks, dcfg.head_dim,
            dtype=dt, device=dev,
        )
        self.dv_cache = torch.zeros_like(self.dk_cache)
        self.keys = torch.zeros(num_slots + 1, dtype=torch.long, device=dev)
        self.temperature = torch.zeros(num_slots + 1, dtype=torch.float32, device=dev)
        self.top_k = torch.ones(num_slots + 1, dtype=torch.long, device=dev)
        self._top_k_host = [1] * (num_slots + 1)
        self.rope = rope_tables(self.depth.rotary_emb, torch.arange(cfg.num_codebooks, device=dev), dt)  # 2x [1, 32, hd]
        self._causal2 = torch.ones(2, 2, dtype=torch.bool, device=dev).tril()[None, None]  # first depth forward
        self.positions = torch.arange(cfg.num_codebooks, device=dev)
        self.offsets = (self.positions - 1) * cfg.vocab_size  # codebook p's rows in the depth embedding table
        self.vocab_hash = vocab_hash(cfg.vocab_size, dev)  # [V]: the noise hash's constant half

    def set_slot(self, slot: int, seed: int, temperature: float, top_k: int) -> None:
        """A request's sampling settings, for every frame it samples in `slot`."""
        self.keys[slot] = seed_key(seed)
        self.temperature[slot] = temperature
        self.top_k[slot] = top_k
        self._top_k_host[slot] = top_k

    def max_top_k(self, slots: list[int]) -> int:
        return max(self._top_k_host[s] for s in slots)

    def sample_frame(self, hidden, slots, frame_idx, max_top_k: int, depth_step=None) -> torch.Tensor:
        """hidden [N, H] backbone last states; slots, frame_idx [N] -> codes [N, 32].
        `depth_step(prev, p, rows)` runs codebooks 2..31: `depth_step_at` by default;
        captured steps may pass a compiled step."""
        depth_step = depth_step or self.depth_step_at
        N = hidden.shape[0]
        rows = prepare_frame(RowSampling(self.temperature[slots], self.top_k[slots], self.keys[slots],
                                         frame_idx * self.num_codebooks, max_top_k), self.num_codebooks, self.vocab_hash)
        code = sample(self.lm_head(hidden), rows, 0)
        codes = [code]
        # Depth positions 0 and 1 (the backbone state, codebook 0) in one forward...
        x = self.depth.inputs_embeds_projector(torch.stack([hidden, self.depth.embed_tokens(code)], dim=1))
        kv = KVAccess(slice(0, N), slice(0, 2), None, slice(0, N), 2, self._causal2)
        cos, sin = self.rope[0][:, :2], self.rope[1][:, :2]
        for i, layer in enumerate(self.depth.layers):
            x = decoder_layer(layer, x, cos, sin, self.dk_cache[i, :N], self.dv_cache[i, :N], kv)
        code = sample(self.depth.norm(x[:, -1]) @ self.heads[0], rows, 1)
        codes.append(code)
        # ...then one step per codebook 2..31.
        for p in range(2, self.num_codebooks):
            code = depth_step(code, p, rows)
            codes.append(code)
        return torch.stack(codes, dim=1)

    def depth_step_at(self, prev, p: int, rows: FrameDraws) -> torch.Tensor:
        """Depth decoder at position p for codebook p, given codebook p-1's codes prev [N]:
        attends to the p + 1 positions written so far (views, exact lengths). Returns [N]."""
        view = DepthView(p + 1, None, self.rope[0][:, p : p + 1], self.rope[1][:, p : p + 1], self.heads[p - 1], p,
                         (p - 1) * self.vocab_size)
        return self._depth_step(prev, view, rows)

    def depth_step_masked(self, prev, p: torch.Tensor, rows: FrameDraws) -> torch.Tensor:
        """The same step with p a 0-d tensor and one shape for every p (attention over all 32
        positions, the later ones masked), so one torch.compile graph serves codebooks 2..31.
        index_select, not x[p]: indexing with a 0-d tensor reads it on the host."""
        at = p.view(1)
        view = DepthView(self.num_codebooks, (self.positions <= p)[None, None, None], self.rope[0].index_select(1, at),
                         self.rope[1].index_select(1, at), self.heads.index_select(0, at - 1)[0], p,
                         self.offsets.index_select(0, at))
        return self._depth_step(prev, view, rows)

    def _depth_step(self, prev, view: DepthView, rows: FrameDraws) -> torch.Tensor:
        N = prev.shape[0]
        x = self.depth.inputs_embeds_projector(self.depth.embed_tokens(prev + view.offset)[:, None])  # [N, 1, Hd]
        p = view.codebook
        kv = KVAccess(slice(0, N), slice(p, p + 1) if isinstance(p, int) else p, None, slice(0, N), view.kv_len, view.mask)
        for i, layer in enumerate(self.depth.layers):
            x = decoder_layer(layer, x, view.cos, view.sin, self.dk_cache[i, :N], self.dv_cache[i, :N], kv)  # [N, 1, Hd]
        return sample(self.depth.norm(x[:, -1]) @ view.head, rows, view.codebook)
