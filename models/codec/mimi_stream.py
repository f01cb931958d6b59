"""Stateful, batched streaming decode over transformers' own MimiModel weights.

`MimiModel.decode` keeps no state in its convolutions, so decoding chunk by chunk clicks at
every seam. Here every causal conv keeps its left context, every transposed conv its overlap
tail, and the decoder transformer its keys/values within its sliding window, all per row:
rows join (reset), stream and leave independently while others keep going. Decoding any
chunking of a sequence equals one whole `MimiModel.decode` of it (up to float rounding),
which is how kyutai's moshi streams.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.mimi.modeling_mimi import (
    MimiConv1d,
    MimiConvTranspose1d,
    MimiResnetBlock,
    apply_rotary_pos_emb,
)

from ..params import CODEBOOK_SIZE
from ..runner.attention import attention


class StreamingMimiDecoder:
    """Decode [N, 32, T] codes for N rows (slots) to [N, T * 1920] float PCM, chunk by chunk."""

    def __init__(self, codec, num_rows: int) -> None:
        self.codec = codec
        self.decoder = codec.decoder
        self.num_rows = num_rows
        param = next(codec.parameters())
        self.device, self.dtype = param.device, param.dtype
        self._state: dict[nn.Module, torch.Tensor] = {}
        for m in self.decoder.modules():
            if isinstance(m, MimiConv1d):
                if m.conv.stride[0] != 1 or not m.causal or m.pad_mode not in ("constant", "zero"):
                    raise ValueError("streaming needs causal, stride-1, zero-padded decoder convs")
                ctx = int(m.padding_total)
                self._state[m] = self._zeros(m.conv.in_channels, ctx)
            elif isinstance(m, MimiConvTranspose1d):
                if m.padding_left != 0:
                    raise ValueError("streaming needs causal transposed convs (trim_right_ratio 1)")
                k, s = m.conv.kernel_size[0], m.conv.stride[0]
                self._state[m] = self._zeros(m.conv.out_channels, k - s)
        tcfg = self.decoder.decoder_transformer.config
        self.window = tcfg.sliding_window
        n_layers = len(self.decoder.decoder_transformer.layers)
        self._keys = [self._kv(tcfg) for _ in range(n_layers)]
        self._values = [self._kv(tcfg) for _ in range(n_layers)]
        self._kv_pos = torch.full((num_rows, self.window - 1), -1, dtype=torch.long, device=self.device)
        self._pos = torch.zeros(num_rows, dtype=torch.long, device=self.device)

    def _zeros(self, channels: int, length: int) -> torch.Tensor:
        return torch.zeros(self.num_rows, channels, length, dtype=self.dtype, device=self.device)

    def _kv(self, cfg) -> torch.Tensor:
        shape = (self.num_rows, cfg.num_key_value_heads, self.window - 1, cfg.head_dim)
        return torch.zeros(shape, dtype=self.dtype, device=self.device)

    def reset(self, rows: list[int]) -> None:
        """Start these rows afresh (a new stream)."""
        idx = torch.tensor(rows, device=self.device)
        for state in self._state.values():
            state[idx] = 0
        self._kv_pos[idx] = -1
        self._pos[idx] = 0

    @torch.inference_mode()
    def decode(self, rows: list[int], codes: torch.Tensor) -> torch.Tensor:
        """codes [N, 32, T] (ids < 2048; ids the model may emit above that are clamped) for
        the given rows -> PCM [N, T * 1920], continuing each row's stream."""
        idx = torch.tensor(rows, device=self.device)
        codes = codes.to(self.device).clamp(0, CODEBOOK_SIZE - 1)
        x = self.codec.quantizer.decode(codes).to(self.dtype)  # [N, hidden, T]
        if self.decoder.upsample is not None:
            x = self._conv_transpose(self.decoder.upsample, x, idx)  # [N, hidden, 2T]
        x = self._transformer(x.transpose(1, 2), idx).transpose(1, 2)
        for layer in self.decoder.decoder_seanet.layers:
            x = self._apply(layer, x, idx)
        return x[:, 0].float()  # [N, T * 1920]

    def _apply(self, layer: nn.Module, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        if isinstance(layer, MimiConv1d):
            return self._conv(layer, x, idx)
        if isinstance(layer, MimiConvTranspose1d):
            return self._conv_transpose(layer, x, idx)
        if isinstance(layer, MimiResnetBlock):
            h = x
            for sub in layer.block:
                h = self._apply(sub, h, idx)
            return self._apply(layer.shortcut, x, idx) + h
        return layer(x)  # ELU, Identity: no state

    def _conv(self, m: MimiConv1d, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Causal conv: prepend the row's last `padding_total` inputs (zeros at the start)."""
        state = self._state[m]
        full = torch.cat([state[idx], x], dim=-1)  # [N, C, ctx + T]
        if state.shape[-1]:
            state[idx] = full[..., full.shape[-1] - state.shape[-1] :]
        return m.conv(full)

    def _conv_transpose(self, m: MimiConvTranspose1d, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Transposed conv: add the previous chunk's overlap tail, keep this chunk's tail."""
        conv, state = m.conv, self._state[m]
        y = F.conv_transpose1d(x, conv.weight, None, conv.stride[0], groups=conv.groups)  # [N, C, (T-1)s + k]
        tail = state.shape[-1]
        y[..., :tail] += state[idx]
        n_out = x.shape[-1] * conv.stride[0]
        state[idx] = y[..., n_out:]
        y = y[..., :n_out]
        return y if conv.bias is None else y + conv.bias[None, :, None]

    def _transformer(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Sliding-window causal transformer, each row at its own position. x [N, S, H]."""
        tr = self.decoder.decoder_transformer
        N, S, _ = x.shape
        q_pos = self._pos[idx][:, None] + torch.arange(S, device=self.device)  # [N, S]
        k_pos = torch.cat([self._kv_pos[idx], q_pos], dim=1)  # [N, W-1+S]
        mask = (k_pos[:, None, :] >= 0) & (k_pos[:, None, :] <= q_pos[:, :, None])
        mask &= q_pos[:, :, None] - k_pos[:, None, :] < self.window  # [N, S, L]
        cos, sin = tr.rotary_emb(x, q_pos)
        for i, layer in enumerate(tr.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(N, S, -1, attn.head_dim).transpose(1, 2)
            k = attn.k_proj(h).view(N, S, -1, attn.head_dim).transpose(1, 2)
            v = attn.v_proj(h).view(N, S, -1, attn.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            keys = torch.cat([self._keys[i][idx], k], dim=2)  # [N, kvh, W-1+S, hd]
            values = torch.cat([self._values[i][idx], v], dim=2)
            self._keys[i][idx] = keys[:, :, -(self.window - 1) :]
            self._values[i][idx] = values[:, :, -(self.window - 1) :]
            o = attention(q, keys, values, mask[:, None], attn.scaling)
            x = x + layer.self_attn_layer_scale(attn.o_proj(o.transpose(1, 2).reshape(N, S, -1)))
            x = x + layer.mlp_layer_scale(layer.mlp(layer.post_attention_layernorm(x)))
        self._kv_pos[idx] = k_pos[:, -(self.window - 1) :]
        self._pos[idx] += S
        return x
