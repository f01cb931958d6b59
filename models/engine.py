"""The synchronous engine: one thread owns it; `step()` is schedule -> run -> postprocess."""

from __future__ import annotations

import math
import secrets
import time

from .config import EngineConfig
from .graphs import resolve_capture
from .loader import LoadedModel
from .params import EngineStats, FinishReason, FRAME_RATE_HZ, GenerationParams, RequestStatus, Segment, StepOutput
from .prompt import build_prompt, encode_segments
from .runner import ModelRunner
from .scheduler import Request, Scheduler

# transformers' rule: a frame whose codebooks 0..30 are all codebook_eos (0) ends the speech.
_EOS_CODEBOOKS = 31


class Engine:
    """Iteration-level batching CSM engine. Requests join and leave at frame boundaries."""

    def __init__(self, loaded: LoadedModel, config: EngineConfig) -> None:
        self.config = config
        self.loaded = loaded
        self.scheduler = Scheduler(config.max_num_seqs, config.max_prefill_tokens)
        self.runner = ModelRunner(loaded.model, loaded.special_ids, config.max_num_seqs, config.max_seq_len)
        self._requests: dict[str, Request] = {}
        self._aborted: list[Request] = []
        self._last_step_s = 0.0
        self._last_batch_size = 0
        self._num_steps = 0
        self._num_frames_total = 0
        self._num_prompt_tokens_total = 0
        self._num_prefix_hits = 0
        self._prefixes: dict[tuple[Segment, ...], object] = {}

    def prepare(self, request_id: str, prompt: str, params: GenerationParams | None = None) -> Request:
        """Validate and tokenize a request without touching engine state (any thread may call).

        Raises ValueError naming the field when the text, params or lengths are unusable."""
        params = params or GenerationParams()
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt: the text to speak must be a non-empty string")
        tokens = build_prompt(self.loaded.tokenizer, self.loaded.special_ids, prompt, params.speaker, params.context)
        room = self.config.max_seq_len - len(tokens) + 1  # frames that still fit in a KV slot
        if room < 1:
            raise ValueError(
                f"prompt: {len(tokens)} positions (text + context) exceed max_seq_len {self.config.max_seq_len}"
            )
        if params.max_frames is not None:
            if params.max_frames > min(room, self.config.max_frames_cap):
                raise ValueError(
                    f"max_frames: {params.max_frames} exceeds the limit {min(room, self.config.max_frames_cap)} "
                    f"for this prompt (max_frames_cap {self.config.max_frames_cap}, max_seq_len "
                    f"{self.config.max_seq_len})"
                )
            max_frames = params.max_frames
        else:
            max_frames = min(self.default_max_frames(prompt), room, self.config.max_frames_cap)
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        prefix = self._longest_prefix(params.context)
        cached = prefix.length if prefix is not None else 0
        return Request(request_id, tokens, params, seed, max_frames, num_prefilled=cached, num_cached=cached, prefix=prefix)

    def _longest_prefix(self, context: tuple[Segment, ...]):
        """The cached prefix covering the most leading context segments, if any."""
        for k in range(len(context), 0, -1):
            prefix = self._prefixes.get(context[:k])
            if prefix is not None:
                return prefix
        return None

    def add_prefix(self, context: tuple[Segment, ...]) -> int:
        """Prefill a voice prompt (context segments) once. Requests whose `context` equals it
        start prefilling after it, with identical results. Returns its length in positions."""
        context = tuple(context)
        tokens = encode_segments(self.loaded.tokenizer, self.loaded.special_ids, context)
        if not context or len(tokens) >= self.config.max_seq_len:
            raise ValueError(f"context: {len(tokens)} positions do not fit max_seq_len {self.config.max_seq_len}")
        self._prefixes[context] = self.runner.compute_prefix(tokens, self.config.max_prefill_tokens)
        return len(tokens)

    def remove_prefix(self, context: tuple[Segment, ...]) -> None:
        """Forget a cached prefix (requests already holding it keep their copy)."""
        self._prefixes.pop(tuple(context), None)

    def default_max_frames(self, text: str) -> int:
        """A generous frame cap from the text: slow speech plus a margin (CSM may never emit EOS)."""
        words = max(len(text.split()), len(text) / 6)
        return math.ceil(words / self.config.words_per_s * FRAME_RATE_HZ) + self.config.frames_margin

    def add_request(self, request_id: str, prompt: str | Request, params: GenerationParams | None = None) -> None:
        """Queue a request (FIFO). `prompt` is the text to speak, or a Request from prepare().

        Raises ValueError for a duplicate id, empty text, bad params or a prompt that cannot fit."""
        req = prompt if isinstance(prompt, Request) else self.prepare(request_id, prompt, params)
        if req.request_id in self._requests:
            raise ValueError(f"request_id: {req.request_id!r} is already in the engine")
        self._requests[req.request_id] = req
        self._num_prefix_hits += req.prefix is not None
        self.scheduler.add(req)

    def abort_request(self, request_id: str) -> None:
        """End a request now; its slot is free for the next step, which reports it as 'abort'.
        Unknown or finished ids are ignored."""
        req = self._requests.get(request_id)
        if req is None or req.status is RequestStatus.FINISHED:
            return
        self.scheduler.finish(req, FinishReason.ABORT)
        self._aborted.append(req)

    def abort_all(self) -> list[str]:
        """End every request at once (after a failed step); returns their ids. No outputs follow."""
        ids = list(self._requests)
        for req in self._requests.values():
            if req.status is not RequestStatus.FINISHED:
                self.scheduler.finish(req, FinishReason.ABORT)
        self._requests.clear()
        self._aborted.clear()
        return ids

    def step(self) -> list[StepOutput]:
        """Run one frame for every running request (prefilling new ones first) and return
        what each produced. Finished requests appear once, with is_finished and the reason."""
        outputs = [self._finished(r, []) for r in self._aborted]
        self._aborted.clear()
        sched = self.scheduler.schedule()
        if sched.is_empty:
            self._last_batch_size = 0
            return outputs
        t0 = time.perf_counter()
        rows, codes = self.runner.execute(sched)
        self._last_step_s = time.perf_counter() - t0
        self._last_batch_size = len(rows)
        self._num_steps += 1
        self._num_frames_total += len(rows)
        for chunk in sched.prefills:
            chunk.request.num_prefilled += chunk.length
            self._num_prompt_tokens_total += chunk.length
        for req, frame in zip(rows, codes):
            req.status = RequestStatus.DECODING
            req.num_frames += 1
            if all(c == 0 for c in frame[:_EOS_CODEBOOKS]):
                self.scheduler.finish(req, FinishReason.EOS)
                outputs.append(self._finished(req, []))
            elif req.num_frames >= req.max_frames:
                self.scheduler.finish(req, FinishReason.LENGTH)
                outputs.append(self._finished(req, [frame]))
            else:
                outputs.append(StepOutput(req.request_id, [frame], num_frames_total=req.num_frames))
        return outputs

    def _finished(self, req: Request, frames: list[list[int]]) -> StepOutput:
        del self._requests[req.request_id]
        num_frames = req.num_frames - (req.finish_reason is FinishReason.EOS)
        return StepOutput(req.request_id, frames, True, req.finish_reason, num_frames)

    def warm_up(self) -> None:
        """Run one short request through every path (prefill, decode, depth loop) so the first
        user request does not pay one-time kernel setup, then capture the decode steps
        (unless enforce_eager; see graphs.py) and run it again through them. Call before serving."""
        mode = resolve_capture(self.config.capture, self.runner.device, self.config.enforce_eager)
        self._warm_up_request()
        if mode and not self.runner.capture_mode:
            self.runner.capture(mode, self.config.batch_buckets())
            self._warm_up_request()

    def _warm_up_request(self) -> None:
        self.add_request("__warm_up__", "Warm up.", GenerationParams(max_frames=2, seed=0))
        while self.has_unfinished_requests():
            self.step()

    def has_unfinished_requests(self) -> bool:
        return bool(self._requests)

    def stats(self) -> EngineStats:
        used = self.scheduler.num_slots - self.scheduler.num_free_slots
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            num_kv_slots_used=used,
            num_kv_slots_total=self.scheduler.num_slots,
            last_step_s=self._last_step_s,
            last_batch_size=self._last_batch_size,
            num_steps=self._num_steps,
            num_frames_total=self._num_frames_total,
            num_prompt_tokens_total=self._num_prompt_tokens_total,
            num_prefix_hits=self._num_prefix_hits,
            num_prefixes=len(self._prefixes),
        )
