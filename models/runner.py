"""The model runner: owns every tensor (static KV caches, per-slot sampling state) and runs
one engine step as batched forwards over the transformers CSM modules' own weights.

Per step: one batched backbone forward for the prompt chunks being prefilled, one batched
backbone forward for all decoding rows (each at its own position), then ONE batched frame
sampler for every row that is due a frame: lm_head -> codebook 0, and the 31-step depth
decoder loop -> codebooks 1..31. Layers, norms, projections and RoPE tables are the
transformers modules; only the attention glue is ours, because transformers' caches keep
one position for the whole batch. One host transfer per step: the new codes.

After `capture()`, decode steps replay a captured backbone step per (batch, KV length)
bucket and a captured frame sampler per batch bucket (see graphs.py); rows are padded up to
their bucket with the scratch slot, whose KV and sampling state nothing else reads then.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.models.csm.modeling_csm import apply_rotary_pos_emb

from .graphs import Capturer, CaptureMode, allow_recompiles, bucket_for
from .params import GenerationParams
from .prompt import PromptTokens
from .sampler import sample, seed_key
from .scheduler import PrefillChunk, Request, SchedulerOutput


@dataclass
class _KV:
    """Where one forward writes its new keys/values and what it attends to.

    write: (slot [N], pos [N]) cache coordinates, and (row [N], t [N]) in the new keys,
    or None when every (row, t=0) is written (decode). read: cache rows, as a slice when
    they are contiguous (a view, no copy) or an index tensor (a gather)."""

    write_slot: torch.Tensor
    write_pos: torch.Tensor
    write_sel: tuple[torch.Tensor, torch.Tensor] | None
    read: slice | torch.Tensor
    kv_len: int
    mask: torch.Tensor | None  # [B, 1, T, kv_len] bool, True = attend

    def update(self, cache: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """cache [S, kvh, L, hd]; new [B, kvh, T, hd]. Returns the rows to attend to."""
        new = new.transpose(1, 2)  # [B, T, kvh, hd]
        new = new[:, 0] if self.write_sel is None else new[self.write_sel]  # [N, kvh, hd]
        cache[self.write_slot, :, self.write_pos] = new
        return cache[self.read, :, : self.kv_len]


@dataclass(frozen=True)
class PrefixKV:
    """Backbone keys/values of a prompt prefix (a voice's context), computed once."""

    length: int
    keys: torch.Tensor  # [layers, kvh, length, hd]
    values: torch.Tensor


def _rows(slots: list[int]) -> slice | torch.Tensor:
    lo = slots[0]
    if slots == list(range(lo, lo + len(slots))):
        return slice(lo, lo + len(slots))
    return torch.tensor(slots)


class ModelRunner:
    def __init__(self, model, special_ids, num_slots: int, max_seq_len: int) -> None:
        cfg = model.config
        dcfg = cfg.depth_decoder_config
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.model = model
        self.backbone = model.backbone_model
        self.depth = model.depth_decoder.model
        self.heads = model.depth_decoder.codebooks_head.weight  # [31, Hd, V]
        self.special = special_ids
        self.num_codebooks = cfg.num_codebooks
        self.vocab_size = cfg.vocab_size
        dev, dt = self.device, self.dtype
        self.scratch_slot = num_slots  # one extra KV row, where prefixes are computed
        self.k_cache = torch.zeros(
            cfg.num_hidden_layers, num_slots + 1, cfg.num_key_value_heads, max_seq_len, cfg.head_dim, dtype=dt, device=dev
        )
        self.v_cache = torch.zeros_like(self.k_cache)
        self.dk_cache = torch.zeros(
            dcfg.num_hidden_layers, num_slots, dcfg.num_key_value_heads, cfg.num_codebooks, dcfg.head_dim,
            dtype=dt, device=dev,
        )
        self.dv_cache = torch.zeros_like(self.dk_cache)
        # Per-slot state, with a row for the scratch slot (the padding rows of captured steps).
        self.last_codes = torch.zeros(num_slots + 1, cfg.num_codebooks, dtype=torch.long, device=dev)
        self.keys = torch.zeros(num_slots + 1, dtype=torch.long, device=dev)
        self.temperature = torch.zeros(num_slots + 1, dtype=torch.float32, device=dev)
        self.top_k = torch.ones(num_slots + 1, dtype=torch.long, device=dev)
        self.top_k_host = [1] * num_slots
        self.max_seq_len = max_seq_len
        self.capture_mode: CaptureMode | None = None
        self.batch_buckets: list[int] = []
        self.kv_buckets: list[int] = []
        self._decode_graphs: dict[tuple[int, int], tuple] = {}  # (batch, kv_len) -> (replay, host, slots, pos)
        self._sample_graphs: dict[int, tuple] = {}  # batch -> (replay, host, hidden, slots, frame_idx)
        # RoPE tables for every position, computed once by the modules' own rotary embeddings.
        probe = torch.zeros(1, dtype=dt, device=dev)
        self.rope = self.backbone.rotary_emb(probe, torch.arange(max_seq_len, device=dev)[None])  # 2x [1, L, hd]
        self.depth_rope = self.depth.rotary_emb(probe, torch.arange(cfg.num_codebooks, device=dev)[None])
        self._causal2 = torch.ones(2, 2, dtype=torch.bool, device=dev).tril()[None, None]  # depth's first step
        self._depth_pos = torch.arange(cfg.num_codebooks, device=dev)

    # ---- one step -------------------------------------------------------------------------
    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput) -> tuple[list[Request], list[list[int]]]:
        """Run one step. Returns the requests that got a frame and their 32 codes each."""
        hidden, rows = [], []
        if sched.prefills:
            for chunk in sched.prefills:
                if chunk.start == chunk.request.num_cached:
                    self._start(chunk.request)
            h, done = self._prefill(sched.prefills)
            if done:
                hidden.append(h)
                rows += done
        if sched.decodes:
            hidden.insert(0, self._decode(sched.decodes))
            rows = sched.decodes + rows
        if not rows:
            return [], []
        slot_list, frame_list = [r.slot for r in rows], [r.num_frames for r in rows]
        hidden = torch.cat(hidden) if len(hidden) > 1 else hidden[0]
        graph = self._sample_graphs.get(bucket_for(len(rows), self.batch_buckets))
        if graph is not None:
            codes = self._replay(graph, hidden, slot_list, frame_list)
        else:
            slots = torch.tensor(slot_list, device=self.device)
            frame_idx = torch.tensor(frame_list, device=self.device)
            codes = self._sample_frame(hidden, slots, frame_idx, max(self.top_k_host[s] for s in slot_list))
        self.last_codes[slot_list] = codes
        return rows, codes.tolist()

    # ---- captured steps -----------------------------------------------------------------
    def capture(self, mode: CaptureMode, batch_sizes: list[int]) -> None:
        """Capture the decode step for every batch bucket in `batch_sizes` and every KV length
        bucket (powers of two from 256 up to max_seq_len), and the frame sampler per batch
        bucket. Largest first, so smaller graphs reuse the largest one's memory."""
        self.capture_mode = mode
        self.batch_buckets = sorted(set(batch_sizes))
        kv, self.kv_buckets = 256, []
        while kv < self.max_seq_len:
            self.kv_buckets.append(kv)
            kv *= 2
        self.kv_buckets.append(self.max_seq_len)
        capturer = Capturer(mode, self.device)
        decode_rows, depth_step = self._decode_rows, None
        if mode == "compile":  # the backbone step whole, and the depth step shared by codebooks 2..31
            allow_recompiles(2 * len(self.batch_buckets) * (len(self.kv_buckets) + 1))
            decode_rows, depth_step = capturer.compile(self._decode_rows), capturer.compile(self._depth_step)
        dev, H = self.device, self.backbone.config.hidden_size
        with torch.inference_mode():
            for B in reversed(self.batch_buckets):
                slots = torch.full((B,), self.scratch_slot, dtype=torch.long, device=dev)
                for L in reversed(self.kv_buckets):
                    pos = torch.zeros(B, dtype=torch.long, device=dev)
                    replay = capturer.capture(decode_rows, slots, pos, L)
                    self._decode_graphs[B, L] = (replay, self._host_buffer(B), slots, pos)
                hidden = torch.zeros(B, H, dtype=self.dtype, device=dev)
                frame_idx = torch.zeros(B, dtype=torch.long, device=dev)
                replay = capturer.capture(self._sample_frame, hidden, slots, frame_idx, self.vocab_size, depth_step)
                self._sample_graphs[B] = (replay, self._host_buffer(B), hidden, slots, frame_idx)

    def _host_buffer(self, batch: int) -> torch.Tensor:
        """A [2, batch] host staging buffer for a graph's integer inputs: pinned on
        accelerators, so the copy to the device is truly asynchronous (no sync). Reusing it
        next step is safe: every step ends by reading its codes back, after all its copies."""
        try:
            return torch.zeros(2, batch, dtype=torch.long, pin_memory=self.device.type != "cpu")
        except RuntimeError:  # no pinned memory on this backend
            return torch.zeros(2, batch, dtype=torch.long)

    def _replay(self, graph: tuple, first: torch.Tensor | None, slot_list: list[int], ints: list[int]) -> torch.Tensor:
        """Fill a captured step's inputs (padding rows: the scratch slot, position/frame 0),
        replay it, and return the real rows of its output."""
        replay, host, *inputs = graph
        n, B = len(slot_list), host.shape[1]
        pad = B - n
        host.copy_(torch.tensor([slot_list + [self.scratch_slot] * pad, ints + [0] * pad]))
        inputs[-2].copy_(host[0], non_blocking=True)
        inputs[-1].copy_(host[1], non_blocking=True)
        if first is not None:
            inputs[0][:n].copy_(first)
        return replay()[:n]

    @torch.inference_mode()
    def compute_prefix(self, prompt: PromptTokens, chunk: int) -> PrefixKV:
        """Prefill `prompt` in the scratch slot, `chunk` positions per forward; keep its KV."""
        req = Request("prefix", prompt, GenerationParams(), 0, 1, slot=self.scratch_slot)
        for start in range(0, len(prompt), chunk):
            self._prefill([PrefillChunk(req, start, min(chunk, len(prompt) - start))])
        n, s = len(prompt), self.scratch_slot
        return PrefixKV(n, self.k_cache[:, s, :, :n].clone(), self.v_cache[:, s, :, :n].clone())

    def _start(self, req: Request) -> None:
        """A request's first prefill chunk: load its cached prefix, set its sampling state."""
        if req.prefix is not None:
            n = req.prefix.length
            self.k_cache[:, req.slot, :, :n] = req.prefix.keys
            self.v_cache[:, req.slot, :, :n] = req.prefix.values
        self.keys[req.slot] = seed_key(req.seed)
        self.temperature[req.slot] = req.params.temperature
        self.top_k[req.slot] = req.params.top_k
        self.top_k_host[req.slot] = req.params.top_k

    # ---- backbone ---------------------------------------------------------------------------
    def _prefill(self, chunks: list[PrefillChunk]) -> tuple[torch.Tensor, list[Request]]:
        """Batched, padded prefill of prompt chunks. Returns the last hidden state [n, H] of
        the requests whose prompt is now complete, and those requests."""
        B, T = len(chunks), max(c.length for c in chunks)
        x = torch.zeros(B, T, self.backbone.config.hidden_size, dtype=self.dtype, device=self.device)
        for i, c in enumerate(chunks):
            x[i, : c.length] = self._embed_prompt(c.request, c.start, c.length)
        start = torch.tensor([c.start for c in chunks], device=self.device)
        pos = start[:, None] + torch.arange(T, device=self.device)  # [B, T]
        kv_len = max(c.start + c.length for c in chunks)
        mask = torch.arange(kv_len, device=self.device) <= pos[:, :, None]  # [B, T, kv_len]
        rows = torch.tensor([i for i, c in enumerate(chunks) for _ in range(c.length)], device=self.device)
        ts = torch.tensor([t for c in chunks for t in range(c.length)], device=self.device)
        slots = torch.tensor([c.request.slot for c in chunks], device=self.device)
        kv = _KV(slots[rows], start[rows] + ts, (rows, ts), _rows([c.request.slot for c in chunks]), kv_len,
                 mask[:, None])
        h = self._backbone(x, pos.clamp(max=self.rope[0].shape[1] - 1), kv)  # [B, T, H]
        last = [(i, c) for i, c in enumerate(chunks) if c.is_last]
        if not last:
            return h[:0, 0], []
        idx = torch.tensor([i for i, _ in last], device=self.device)
        t_last = torch.tensor([c.length - 1 for _, c in last], device=self.device)
        return h[idx, t_last], [c.request for _, c in last]

    def _decode(self, reqs: list[Request]) -> torch.Tensor:
        """One backbone step for every decoding row, each at its own position. Returns [B, H]."""
        slot_list = [r.slot for r in reqs]
        pos_list = [r.num_prompt + r.num_frames - 1 for r in reqs]  # where the last frame goes
        kv_len = max(pos_list) + 1
        B, L = bucket_for(len(reqs), self.batch_buckets), bucket_for(kv_len, self.kv_buckets)
        graph = self._decode_graphs.get((B, L))
        if graph is not None:
            return self._replay(graph, None, slot_list, pos_list)
        slots = torch.tensor(slot_list, device=self.device)
        pos = torch.tensor(pos_list, device=self.device)
        return self._decode_rows(slots, pos, kv_len, _rows(slot_list))

    def _decode_rows(self, slots: torch.Tensor, pos: torch.Tensor, kv_len: int, read=None) -> torch.Tensor:
        """Backbone step for rows in `slots` at positions `pos`, attending to the first
        `kv_len` cache positions (read: those slots as a slice, or gathered). Returns [B, H]."""
        mask = torch.arange(kv_len, device=self.device) <= pos[:, None]  # [B, kv_len]
        x = self.backbone.embed_tokens(self.last_codes[slots][:, None, :])  # [B, 1, H]
        kv = _KV(slots, pos, None, slots if read is None else read, kv_len, mask[:, None, None])
        return self._backbone(x, pos[:, None], kv)[:, 0]

    def _backbone(self, x: torch.Tensor, pos: torch.Tensor, kv: _KV) -> torch.Tensor:
        cos, sin = self.rope[0][0, pos], self.rope[1][0, pos]  # [B, T, hd]
        for i, layer in enumerate(self.backbone.layers):
            x = self._layer(layer, x, cos, sin, self.k_cache[i], self.v_cache[i], kv)
        return self.backbone.norm(x)

    def _layer(self, layer, x, cos, sin, k_cache, v_cache, kv: _KV) -> torch.Tensor:
        """CsmDecoderLayer's math with our KV cache: x + attn(norm(x)), then x + mlp(norm(x))."""
        attn = layer.self_attn
        B, T, _ = x.shape
        h = layer.input_layernorm(x)
        q = attn.q_proj(h).view(B, T, -1, attn.head_dim).transpose(1, 2)  # [B, nh, T, hd]
        k = attn.k_proj(h).view(B, T, -1, attn.head_dim).transpose(1, 2)  # [B, kvh, T, hd]
        v = attn.v_proj(h).view(B, T, -1, attn.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        keys, values = kv.update(k_cache, k), kv.update(v_cache, v)  # [B, kvh, kv_len, hd]
        o = attention(q, keys, values, kv.mask, attn.scaling)  # [B, nh, T, hd]
        x = x + attn.o_proj(o.transpose(1, 2).reshape(B, T, -1))
        return x + layer.mlp(layer.post_attention_layernorm(x))

    def _embed_prompt(self, req: Request, start: int, length: int) -> torch.Tensor:
        """Text embeddings, with audio / audio-eos positions replaced by summed frame codes,
        as transformers' `_merge_input_ids_with_input_values` does. Returns [length, H]."""
        token_ids = req.prompt.token_ids
        audio_ids = (self.special.audio, self.special.audio_eos)
        chunk = token_ids[start : start + length]
        emb = self.model.embed_text_tokens(torch.tensor(chunk, device=self.device))
        where = [t for t, tok in enumerate(chunk) if tok in audio_ids]  # on the host: no sync
        if where:
            first = sum(1 for tok in token_ids[:start] if tok in audio_ids)
            codes = torch.tensor(req.prompt.frames[first : first + len(where)], device=self.device)
            emb[torch.tensor(where, device=self.device)] = self.backbone.embed_tokens(codes[None])[0]
        return emb

    # ---- frame sampling: codebook 0 from the backbone, 1..31 from the depth decoder -------
    def _sample_frame(self, hidden, slots, frame_idx, max_top_k: int, depth_step=None) -> torch.Tensor:
        """hidden [N, H] backbone last states -> codes [N, 32], all rows in one depth loop
        (depth_step: a compiled `_depth_step` for this N, else the eager one)."""
        compiled, depth_step = depth_step is not None, depth_step or self._depth_step
        N = hidden.shape[0]
        temp, top_k, keys = self.temperature[slots], self.top_k[slots], self.keys[slots]
        counter = frame_idx * self.num_codebooks
        code = sample(self.model.lm_head(hidden), temp, top_k, keys, counter, max_top_k)
        codes = [code]
        # Depth positions 0 and 1 (the backbone state, codebook 0) in one forward...
        x = self.depth.inputs_embeds_projector(torch.stack([hidden, self.depth.embed_tokens(code)], dim=1))
        rows = torch.arange(N, device=self.device)
        kv = _KV(rows.repeat_interleave(2), self._depth_pos[:2].repeat(N), _all(N, 2, self.device), slice(0, N), 2,
                 self._causal2)
        cos, sin = self.depth_rope[0][:, :2], self.depth_rope[1][:, :2]
        for i, layer in enumerate(self.depth.layers):
            x = self._layer(layer, x, cos, sin, self.dk_cache[i, :N], self.dv_cache[i, :N], kv)
        code = sample(self.depth.norm(x[:, -1]) @ self.heads[0], temp, top_k, keys, counter + 1, max_top_k)
        codes.append(code)
        # ...then one step per codebook 2..31 (compiled: one shape for all, p as a tensor).
        for p in range(2, self.num_codebooks):
            code = depth_step(code, self._depth_pos[p] if compiled else p, temp, top_k, keys, counter, max_top_k)
            code = code.clone() if compiled else code  # reduce-overhead reuses a graph's output memory
            codes.append(code)
        return torch.stack(codes, dim=1)

    def _depth_step(self, prev, p, temp, top_k, keys, counter, max_top_k: int) -> torch.Tensor:
        """Depth decoder at position p for codebook p, given codebook p-1's codes [N].
        Returns codes [N]. p is an int (eager and device graphs: views, attention over the
        p + 1 positions written so far) or a 0-d tensor (torch.compile: attention over all
        positions with the later ones masked, so one compiled graph serves every p)."""
        N, V = prev.shape[0], self.vocab_size
        if isinstance(p, int):
            pos, kv_len, mask = self._depth_pos[p], p + 1, None
            cos, sin, head = self.depth_rope[0][:, p : p + 1], self.depth_rope[1][:, p : p + 1], self.heads[p - 1]
        else:  # index_select, not x[p]: indexing with a 0-d tensor reads it on the host
            pos, kv_len, mask = p, self.num_codebooks, (self._depth_pos <= p)[None, None, None]
            at = p.view(1)
            cos, sin = self.depth_rope[0].index_select(1, at), self.depth_rope[1].index_select(1, at)
            head = self.heads.index_select(0, at - 1)[0]
        x = self.depth.inputs_embeds_projector(self.depth.embed_tokens(prev + (pos - 1) * V)[:, None])  # [N, 1, Hd]
        kv = _KV(torch.arange(N, device=self.device), pos.expand(N), None, slice(0, N), kv_len, mask)
        for i, layer in enumerate(self.depth.layers):
            x = self._layer(layer, x, cos, sin, self.dk_cache[i, :N], self.dv_cache[i, :N], kv)
        return sample(self.depth.norm(x[:, -1]) @ head, temp, top_k, keys, counter + pos, max_top_k)


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


def _all(n: int, t: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (row, t) pair, row-major: selects all new keys of a multi-token forward."""
    return (torch.arange(n, device=device).repeat_interleave(t), torch.arange(t, device=device).repeat(n))
