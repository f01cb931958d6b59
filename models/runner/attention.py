"""Attention with our own KV caches, over transformers' layer weights.

transformers' caches keep one position for the whole batch; the engine's rows are each at
their own position, in their own KV slot. `KVAccess` says where a forward writes its new keys
and values and what it reads back; `decoder_layer` is CsmDecoderLayer's math with it;
`attention` is grouped-query attention (also used by the streaming Mimi decoder).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class KVAccess:
    """Where one forward writes its new keys/values and what it attends to.

    write: (slot [N], pos [N]) cache coordinates, and (row [N], t [N]) in the new keys,
    or None when every (row, t=0) is written (decode); or, where rows 0..B of the cache are
    the batch's rows, all written at the same positions (the depth decoder), `write_slot`
    slice(0, B) and `write_pos` a slice of T positions, or one position as a 0-d tensor
    (a compiled step's): one write into the cache in place. read: cache rows, as a slice
    when they are contiguous (a view, no copy) or an index tensor (a gather)."""

    write_slot: torch.Tensor | slice
    write_pos: torch.Tensor | slice
    write_sel: tuple[torch.Tensor, torch.Tensor] | None
    read: slice | torch.Tensor
    kv_len: int
    mask: torch.Tensor | None  # [B|1, 1, T, kv_len] bool, True = attend; None = all visible

    def update(self, cache: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """cache [S, kvh, L, hd]; new [B, kvh, T, hd]. Returns the rows to attend to."""
        if isinstance(self.write_slot, slice):  # the batch's own rows, same positions
            at = self.write_pos if isinstance(self.write_pos, slice) else self.write_pos.view(1)  # [1], not 0-d:
            cache[self.write_slot, :, at] = new  # a 0-d index would be read on the host
            return cache[self.read, :, : self.kv_len]
        new = new.transpose(1, 2)  # [B, T, kvh, hd]
        new = new[:, 0] if self.write_sel is None else new[self.write_sel]  # [N, kvh, hd]
        cache[self.write_slot, :, self.write_pos] = new
        return cache[self.read, :, : self.kv_len]


@dataclass(frozen=True)
class PrefixKV:
    """Backbone keys/values of a prompt prefix (a voice's or a conversation's context), computed once."""

    length: int
    keys: torch.Tensor  # [layers, kvh, length, hd]
    values: torch.Tensor

    @property
    def num_bytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes


def rows_of(slots: list[int]) -> slice | torch.Tensor:
    """Cache rows for these slots: a slice when contiguous (a view), else an index tensor."""
    lo = slots[0]
    if slots == list(range(lo, lo + len(slots))):
        return slice(lo, lo + len(slots))
    return torch.tensor(slots)


def rope_tables(rotary_emb, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, signed sin) [1, L, hd] for `positions` [L], from the module's own rotary embedding;
    the sin with its first half negated, as `rotate` takes it."""
    cos, sin = rotary_emb(torch.zeros(1, dtype=dtype, device=positions.device), positions[None])
    half = sin.shape[-1] // 2
    return cos, torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)


def rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """RoPE, the numbers of transformers' apply_rotary_pos_emb (x * cos + rotate_half(x) * sin)
    in 4 ops: rotate_half(x) * sin = [-x2 * s1, x1 * s2] = cat(x2, x1) * signed_sin exactly
    (a negation commutes with rounding). x [B, heads, T, hd]; cos, signed_sin [B|1, 1, T, hd]."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat([x[..., half:], x[..., :half]], dim=-1) * signed_sin


def decoder_layer(layer, x, cos, sin, k_cache, v_cache, kv: KVAccess) -> torch.Tensor:
    """CsmDecoderLayer's math with our KV cache: x + attn(norm(x)), then x + mlp(norm(x)).
    x [B, T, H]; cos, sin [B|1, T, hd] (sin signed: rope_tables); caches [S, kvh, L, hd]."""
    attn = layer.self_attn
    B, T, _ = x.shape
    h = layer.input_layernorm(x)
    q = attn.q_proj(h).view(B, T, -1, attn.head_dim).transpose(1, 2)  # [B, nh, T, hd]
    k = attn.k_proj(h).view(B, T, -1, attn.head_dim).transpose(1, 2)  # [B, kvh, T, hd]
    v = attn.v_proj(h).view(B, T, -1, attn.head_dim).transpose(1, 2)
    nh = q.shape[1]
    qk = rotate(torch.cat([q, k], dim=1), cos[:, None], sin[:, None])  # [B, nh + kvh, T, hd]: q and k at once
    q, k = qk[:, :nh], qk[:, nh:]
    keys, values = kv.update(k_cache, k), kv.update(v_cache, v)  # [B, kvh, kv_len, hd]
    o = attention(q, keys, values, kv.mask, attn.scaling)  # [B, nh, T, hd]
    x = x + attn.o_proj(o.transpose(1, 2).reshape(B, T, -1))
    return x + layer.mlp(layer.post_attention_layernorm(x))


def attention(q, k, v, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Grouped-query attention. q [B, nh, T, hd]; k, v [B, kvh, L, hd]; mask [B|1, 1, T, L]
    bool (True = attend) or None (all visible). Returns [B, nh, T, hd].

    On CPU an explicit grouped matmul-softmax-matmul (softmax in float32, like transformers'
    eager attention) is 5-15x faster than SDPA's flash kernel for decode shapes; accelerators
    use SDPA."""
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
    B, nh, T, hd = q.shape
    kvh, L = k.shape[1], k.shape[2]
    g = nh // kvh
    scores = (q.reshape(B, kvh, g * T, hd) @ k.transpose(-1, -2)).float() * scale  # [B, kvh, g*T, L]
    if mask is not None:
        mask = mask[:, :, None].expand(-1, -1, g, -1, -1).reshape(mask.shape[0], 1, g * T, L)
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(dim=-1).to(q.dtype)
    return (probs @ v).reshape(B, nh, T, hd)
