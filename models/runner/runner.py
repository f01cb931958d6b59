"""The model runner: owns the backbone's static KV slots and runs one engine step as batched
forwards over the transformers CSM modules' own weights.

Per step: one batched backbone forward for the prompt chunks being prefilled, one batched
backbone forward for all decoding rows (each at its own position), then ONE batched frame
sampler (frame.py) for every row that is due a frame. Layers, norms, projections and RoPE
tables are the transformers modules; only the attention glue is ours (attention.py). One
host transfer per step: the new codes.

After `capture()`, the decoding rows' whole frame (backbone step, codebook 0, the 31-step
depth loop and all 32 draws) replays as ONE captured step per (batch, KV length) bucket,
and the rows whose prompt a step completes replay a captured frame sampler per batch
bucket (graphs.py); rows are padded up to their bucket with the scratch slot. A decode-only
step is then one replay.
"""

from __future__ import annotations

import torch

from ..core.prompt import PromptTokens
from ..core.request import Request
from ..core.scheduler import PrefillChunk, RunnerOutput, SchedulerOutput
from ..params import GenerationParams
from .attention import KVAccess, PrefixKV, decoder_layer, rope_tables, rows_of
from .frame import FrameSampler
from .graphs import CapturedStep, CaptureMode, Capturer, allow_recompiles, bucket_for, host_buffer


class ModelRunner:
    def __init__(self, model, special_ids, num_slots: int, max_seq_len: int) -> None:
        cfg = model.config
        param = next(model.parameters())
        dev, dt = self.device, self.dtype = param.device, param.dtype
        self.model = model
        self.backbone = model.backbone_model
        self.special = special_ids
        self.max_seq_len = max_seq_len
        self.scratch_slot = num_slots  # one extra KV row: prefixes are computed there, padding rows use it
        self.k_cache = torch.zeros(
            cfg.num_hidden_layers, num_slots + 1, cfg.num_key_value_heads, max_seq_len, cfg.head_dim, dtype=dt, device=dev
        )
        self.v_cache = torch.zeros_like(self.k_cache)
        self.last_codes = torch.zeros(num_slots + 1, cfg.num_codebooks, dtype=torch.long, device=dev)
        self.frames = FrameSampler(model, num_slots)
        # RoPE tables for every position, computed once by the module's own rotary embedding.
        self.rope = rope_tables(self.backbone.rotary_emb, torch.arange(max_seq_len, device=dev), dt)  # 2x [1, L, hd]
        self.capture_mode: CaptureMode | None = None
        self.batch_buckets: list[int] = []
        self.kv_buckets: list[int] = []
        self._decode_steps: dict[tuple[int, int], CapturedStep] = {}  # (batch, kv_len) bucket: the whole frame
        self._frame_steps: dict[int, CapturedStep] = {}  # batch bucket: the frame after a prefill

    # ---- one step -------------------------------------------------------------------------
    @torch.inference_mode()
    def execute(self, scheduled: SchedulerOutput) -> RunnerOutput:
        """Run one step: the decoding rows' frame (one replay where their whole frame is
        captured), prefill chunks, then one frame sampler for every other request due a
        frame (eager decoding rows, then completed prefills)."""
        codes, hidden, requests, sampled = [], [], [], []
        if scheduled.decodes:
            whole = self._decode_frame_captured(scheduled.decodes)
            if whole is not None:
                codes.append(whole)
                requests += scheduled.decodes
            else:
                hidden.append(self._decode(scheduled.decodes))
                sampled += scheduled.decodes
        if scheduled.prefills:
            for chunk in scheduled.prefills:
                if chunk.start == chunk.request.num_cached:
                    self._start(chunk.request)
            h, done = self._prefill(scheduled.prefills)
            if done:
                hidden.append(h)
                sampled += done
        if sampled:
            codes.append(self._sample(torch.cat(hidden) if len(hidden) > 1 else hidden[0], sampled))
            requests += sampled
        if not requests:
            return RunnerOutput()
        slot_list = [r.slot for r in requests]
        codes = torch.cat(codes) if len(codes) > 1 else codes[0]  # [N, 32]
        self.last_codes[slot_list] = codes
        return RunnerOutput(requests, codes.tolist())

    def _sample(self, hidden: torch.Tensor, reqs: list[Request]) -> torch.Tensor:
        """The frame of these rows from their last hidden states [N, H]. Returns codes [N, 32]."""
        slot_list, frame_list = [r.slot for r in reqs], [r.num_frames for r in reqs]
        step = self._frame_steps.get(bucket_for(len(reqs), self.batch_buckets))
        if step is not None:
            return step.run(slot_list, (frame_list,), self.scratch_slot, hidden)
        slots = torch.tensor(slot_list, device=self.device)
        frame_idx = torch.tensor(frame_list, device=self.device)
        return self.frames.sample_frame(hidden, slots, frame_idx, self.frames.max_top_k(slot_list))

    def _start(self, req: Request) -> None:
        """A request's first prefill chunk: load its cached prefix, set its sampling state."""
        if req.prefix is not None:
            n = req.prefix.length
            self.k_cache[:, req.slot, :, :n] = req.prefix.keys
            self.v_cache[:, req.slot, :, :n] = req.prefix.values
        self.frames.set_slot(req.slot, req.seed, req.params.temperature, req.params.top_k)

    @torch.inference_mode()
    def compute_prefix(self, prompt: PromptTokens, chunk: int, base: PrefixKV | None = None) -> PrefixKV:
        """Prefill `prompt` in the scratch slot, `chunk` positions per forward, and keep its KV.
        With `base` (the KV of the prompt's first base.length positions), only the positions
        after it are computed."""
        s, start = self.scratch_slot, 0
        req = Request("prefix", prompt, GenerationParams(), 0, 1, slot=s)
        if base is not None:
            start = base.length
            self.k_cache[:, s, :, :start] = base.keys
            self.v_cache[:, s, :, :start] = base.values
        for pos in range(start, len(prompt), chunk):
            self._prefill([PrefillChunk(req, pos, min(chunk, len(prompt) - pos))])
        n = len(prompt)
        return PrefixKV(n, self.k_cache[:, s, :, :n].clone(), self.v_cache[:, s, :, :n].clone())

    # ---- captured steps -----------------------------------------------------------------
    def capture(self, mode: CaptureMode, batch_sizes: list[int]) -> None:
        """Capture, for every batch bucket in `batch_sizes`, the decoding rows' whole frame per
        KV length bucket (powers of two from 256 up to max_seq_len) and the frame sampler
        after a prefill. Largest first, so smaller graphs reuse the largest one's memory."""
        self.capture_mode = mode
        self.batch_buckets = sorted(set(batch_sizes))
        kv, self.kv_buckets = 256, []
        while kv < self.max_seq_len:
            self.kv_buckets.append(kv)
            kv *= 2
        self.kv_buckets.append(self.max_seq_len)
        capturer = Capturer(mode, self.device)
        decode_rows, depth_step = self._decode_rows, None
        if mode == "compile":  # the backbone step whole, and one depth step shared by codebooks 2..31
            allow_recompiles(2 * len(self.batch_buckets) * (len(self.kv_buckets) + 1))
            decode_rows = capturer.compile(self._decode_rows)
            depth_step = _same_shape_depth_step(capturer.compile(self.frames.depth_step_masked), self.frames.positions)
        dev, H, V = self.device, self.backbone.config.hidden_size, self.frames.vocab_size
        with torch.inference_mode():
            for B in reversed(self.batch_buckets):
                slots = torch.full((B,), self.scratch_slot, dtype=torch.long, device=dev)
                frame_idx = torch.zeros(B, dtype=torch.long, device=dev)
                for L in reversed(self.kv_buckets):
                    pos = torch.zeros(B, dtype=torch.long, device=dev)
                    replay = capturer.capture(self._decode_frame, slots, pos, frame_idx, L, V, decode_rows, depth_step)
                    self._decode_steps[B, L] = CapturedStep(replay, host_buffer(3, B, dev), slots, (pos, frame_idx))
                hidden = torch.zeros(B, H, dtype=self.dtype, device=dev)
                replay = capturer.capture(self.frames.sample_frame, hidden, slots, frame_idx, V, depth_step)
                self._frame_steps[B] = CapturedStep(replay, host_buffer(2, B, dev), slots, (frame_idx,), hidden)

    def captured_buckets(self) -> tuple[set[tuple[int, int]], set[int]]:
        """The (batch, KV length) buckets of captured whole-frame decode steps, and the batch
        buckets of captured frame samplers (after a prefill)."""
        return set(self._decode_steps), set(self._frame_steps)

    def num_replays(self) -> tuple[int, int]:
        """How many backbone decode steps and how many frame samplers ran captured so far (the
        rest ran eagerly): a whole-frame replay is one of each."""
        decodes = sum(s.num_replays for s in self._decode_steps.values())
        return decodes, decodes + sum(s.num_replays for s in self._frame_steps.values())

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
        kv = KVAccess(slots[rows], start[rows] + ts, (rows, ts), rows_of([c.request.slot for c in chunks]), kv_len,
                      mask[:, None])
        h = self._backbone(x, pos.clamp(max=self.rope[0].shape[1] - 1), kv)  # [B, T, H]
        last = [(i, c) for i, c in enumerate(chunks) if c.is_last]
        if not last:
            return h[:0, 0], []
        idx = torch.tensor([i for i, _ in last], device=self.device)
        t_last = torch.tensor([c.length - 1 for _, c in last], device=self.device)
        return h[idx, t_last], [c.request for _, c in last]

    def _decode_frame_captured(self, reqs: list[Request]) -> torch.Tensor | None:
        """The decoding rows' whole frame from its captured step: codes [B, 32]; None when no
        step is captured for their batch and KV length buckets."""
        pos_list = [r.num_prompt + r.num_frames - 1 for r in reqs]  # where the last frame goes
        kv_bucket = bucket_for(max(pos_list) + 1, self.kv_buckets)
        step = self._decode_steps.get((bucket_for(len(reqs), self.batch_buckets), kv_bucket))
        if step is None:
            return None
        return step.run([r.slot for r in reqs], (pos_list, [r.num_frames for r in reqs]), self.scratch_slot)

    def _decode(self, reqs: list[Request]) -> torch.Tensor:
        """One backbone step for every decoding row, each at its own position. Returns [B, H]."""
        slot_list = [r.slot for r in reqs]
        pos_list = [r.num_prompt + r.num_frames - 1 for r in reqs]  # where the last frame goes
        slots = torch.tensor(slot_list, device=self.device)
        pos = torch.tensor(pos_list, device=self.device)
        return self._decode_rows(slots, pos, max(pos_list) + 1, rows_of(slot_list))

    def _decode_frame(self, slots, pos, frame_idx, kv_len: int, max_top_k: int, decode_rows=None,
                      depth_step=None) -> torch.Tensor:
        """The whole frame of decoding rows, as one function to capture: the backbone step
        (`decode_rows`: _decode_rows or its compiled block) then the frame sampler. [B, 32]."""
        hidden = (decode_rows or self._decode_rows)(slots, pos, kv_len)
        return self.frames.sample_frame(hidden, slots, frame_idx, max_top_k, depth_step)

    def _decode_rows(self, slots: torch.Tensor, pos: torch.Tensor, kv_len: int, read=None) -> torch.Tensor:
        """Backbone step for rows in `slots` at positions `pos`, attending to the first
        `kv_len` cache positions (read: those slots as a slice, or gathered). Returns [B, H]."""
        mask = torch.arange(kv_len, device=self.device) <= pos[:, None]  # [B, kv_len]
        x = self.backbone.embed_tokens(self.last_codes[slots][:, None, :])  # [B, 1, H]
        kv = KVAccess(slots, pos, None, slots if read is None else read, kv_len, mask[:, None, None])
        return self._backbone(x, pos[:, None], kv)[:, 0]

    def _backbone(self, x: torch.Tensor, pos: torch.Tensor, kv: KVAccess) -> torch.Tensor:
        cos, sin = self.rope[0][0, pos], self.rope[1][0, pos]  # [B, T, hd]
        for i, layer in enumerate(self.backbone.layers):
            x = decoder_layer(layer, x, cos, sin, self.k_cache[i], self.v_cache[i], kv)
        return self.backbone.norm(x)

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


def _same_shape_depth_step(compiled, positions: torch.Tensor):
    """Adapts a compiled `depth_step_masked` to the `depth_step(prev, p: int, rows)` call:
    p as a 0-d tensor (one graph for every p), and a copy of each output (reduce-overhead
    reuses a graph's output memory on the next replay)."""

    def step(prev, p: int, rows):
        return compiled(prev, positions[p], rows).clone()

    return step
