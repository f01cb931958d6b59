"""The synchronous engine: one thread owns it; `step()` is schedule -> run -> update.

Threading contract: `prepare` reads only immutable state (tokenizer, config) and may run on
any thread; every other method runs on the owning thread (the EngineLoop's thread).
"""

from __future__ import annotations

import math
import secrets
import statistics
import time
from collections.abc import Callable

from .core.config import EngineConfig
from .core.prompt import Prefix, build_prompt, encode_segments
from .core.request import Request
from .core.scheduler import RunnerOutput, Scheduler, SchedulerOutput
from .errors import RequestError
from .loading.loader import LoadedModel, load_model
from .params import FRAME_RATE_HZ, EngineStats, GenerationParams, Priority, Segment, StepOutput
from .runner.graphs import resolve_capture
from .runner.runner import ModelRunner

StepHook = Callable[[SchedulerOutput], None]


class Engine:
    """Iteration-level batching CSM engine. Requests join and leave at frame boundaries."""

    def __init__(self, loaded: LoadedModel, config: EngineConfig, before_step: StepHook | None = None) -> None:
        """`before_step(scheduled)` (optional) sees each step's schedule before the runner runs
        it: the seam for fault injection, where what it raises fails the step as a device
        error would."""
        self.config = config
        self.loaded = loaded
        self.scheduler = Scheduler(config.max_num_seqs, config.max_prefill_tokens)
        self.runner = ModelRunner(loaded.model, loaded.special_ids, config.max_num_seqs, config.max_seq_len)
        self._before_step = before_step
        self._last_step_s = 0.0
        self._last_batch_size = 0
        self._last_shape = (0, 0)  # (prefills, decodes) of the latest step
        self._num_steps = 0
        self._num_prefix_hits = 0
        self._period_from: tuple[int, float] | None = None  # (rows, start) of a decode-only step to time
        self._period: tuple[int, float] = (0, 0.0)  # the latest (rows, start-to-start seconds)

    def set_batch_rows(self, batch_rows: Callable[[int], int | None] | None) -> None:
        """How many batch-priority rows may run next to n interactive ones (scheduler.py).
        Call before the engine's thread starts stepping."""
        self.scheduler.batch_rows = batch_rows

    # ---- requests in ------------------------------------------------------------------------
    def prepare(
        self, request_id: str, text: str, params: GenerationParams | None = None, context: tuple[Segment, ...] = (),
        prefix: Prefix | None = None, frame_cap: int | None = None, priority: Priority = "interactive",
    ) -> Request:
        """Validate and tokenize a request without touching engine state (any thread may call).

        `context`: earlier segments the text follows (a voice, earlier turns). `prefix`: a
        computed prefix that `context` starts with; the request then skips its positions.
        `frame_cap`: at most this many frames (the caller's audio budget); the request ends
        with reason `length` there. `priority` "batch": may be paused between frames while
        interactive requests need the step (scheduler.py). Raises RequestError naming the field when the text or
        lengths are unusable, ValueError for a prefix that `context` does not start with."""
        params = params or GenerationParams()
        if not isinstance(text, str) or not text.strip():
            raise RequestError("input", "the text to speak must be a non-empty string")
        context = tuple(context)
        if prefix is not None and not prefix.covers(context):
            raise ValueError("prefix: the request's context does not start with the prefix's segments")
        tokens = build_prompt(self.loaded.tokenizer, self.loaded.special_ids, text, params.speaker, context)
        room = self.config.max_seq_len - len(tokens) + 1  # frames that still fit in a KV slot
        if room < 1:
            raise RequestError(
                "input", f"the text and its voice prompt take {len(tokens)} positions, more than the model's "
                f"max_seq_len {self.config.max_seq_len}; use a shorter text or voice sample", "context_length_exceeded")
        limit = min(room, self.config.max_frames_cap)
        if params.max_frames is not None and params.max_frames > limit:
            raise RequestError(
                "max_frames", f"{params.max_frames} exceeds the limit {limit} for this prompt (max_frames_cap "
                f"{self.config.max_frames_cap}, max_seq_len {self.config.max_seq_len})")
        max_frames = params.max_frames or min(self.default_max_frames(text), limit)
        if frame_cap is not None:
            max_frames = max(1, min(max_frames, frame_cap))
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        request = Request(request_id, tokens, params, seed, max_frames, context=context, priority=priority)
        if prefix is not None:
            request.use_prefix(prefix.kv, prefix.length)
        return request

    def add_request(
        self, request_id: str, text: str, params: GenerationParams | None = None, context: tuple[Segment, ...] = (),
        prefix: Prefix | None = None, frame_cap: int | None = None,
    ) -> None:
        """Validate and queue a request (FIFO); arguments as `prepare`. Raises RequestError for
        unusable input and ValueError for an id already in the engine."""
        self.add_prepared(self.prepare(request_id, text, params, context, prefix, frame_cap))

    def add_prepared(self, request: Request) -> None:
        """Queue a request from `prepare()`. Raises ValueError for an id already in the engine."""
        self.scheduler.add(request)
        self._num_prefix_hits += request.prefix is not None

    def abort_request(self, request_id: str) -> None:
        """End a request now; its slot is free for the next step, which reports it as 'abort'.
        Unknown or finished ids are ignored."""
        self.scheduler.abort(request_id)

    def abort_all(self) -> list[str]:
        """End every request at once (after a failed step); returns their ids. No outputs follow."""
        return self.scheduler.abort_all()

    # ---- context prefixes -------------------------------------------------------------------
    def compute_prefix(self, context: tuple[Segment, ...], base: Prefix | None = None) -> Prefix:
        """Prefill context segments (a voice prompt, a conversation so far) once, for requests
        that start with them (`prepare(..., prefix=)`). With `base`, a prefix `context` starts
        with, only the positions after it are computed. The engine keeps no reference: the
        caller owns the result. Raises RequestError when it does not fit a KV slot."""
        context = tuple(context)
        tokens = encode_segments(self.loaded.tokenizer, self.loaded.special_ids, context)
        if not context or len(tokens) >= self.config.max_seq_len:
            raise RequestError("context", f"the voice prompt takes {len(tokens)} positions, more than the model's "
                               f"max_seq_len {self.config.max_seq_len}", "context_length_exceeded")
        if base is not None and not base.covers(context):
            raise ValueError("base: the context does not start with the base prefix's segments")
        kv = self.runner.compute_prefix(tokens, self.config.max_prefill_tokens, base.kv if base else None)
        return Prefix(context, len(tokens), kv, kv.num_bytes)

    def default_max_frames(self, text: str) -> int:
        """A generous frame cap from the text: slow speech plus a margin (CSM may never emit EOS)."""
        words = max(len(text.split()), len(text) / 6)
        return math.ceil(words / self.config.words_per_s * FRAME_RATE_HZ) + self.config.frames_margin

    # ---- the step ---------------------------------------------------------------------------
    def step(self) -> list[StepOutput]:
        """Run one frame for every running request (prefilling new ones first) and return
        what each produced. Finished requests appear once, with is_finished and the reason.

        Also times the period a stream sees: from a decode-only step's start to the next
        step's start (the step and everything its thread did in between), when the next
        step follows at once (requests were left unfinished)."""
        t0 = time.perf_counter()
        if self._period_from is not None:
            rows, start = self._period_from
            self._period = (rows, t0 - start)
        scheduled = self.scheduler.schedule()
        output = RunnerOutput()
        if not scheduled.is_empty:
            if self._before_step is not None:
                self._before_step(scheduled)
            output = self.runner.execute(scheduled)
            self._last_step_s = time.perf_counter() - t0
            self._num_steps += 1
        self._last_batch_size = len(output.requests)
        self._last_shape = (len(scheduled.prefills), len(scheduled.decodes))
        outputs = self.scheduler.update_from_output(scheduled, output)
        decode_only = bool(scheduled.decodes) and not scheduled.prefills
        self._period_from = (len(output.requests), t0) if decode_only and self.has_unfinished_requests() else None
        return outputs

    def warm_up(self) -> None:
        """Run one short request through every path (prefill, decode, depth loop) so the first
        user request does not pay one-time kernel setup, then capture the decode steps
        (unless enforce_eager; see runner/graphs.py) and run it again through them. Call
        before serving."""
        mode = resolve_capture(self.config.capture, self.runner.device, self.config.enforce_eager)
        self._warm_up_request()
        if mode and not self.runner.capture_mode:
            self.runner.capture(mode, self.config.batch_buckets())
            self._warm_up_request()

    def _warm_up_request(self) -> None:
        self.add_request("__warm_up__", "Warm up.", GenerationParams(max_frames=2, seed=0))
        while self.has_unfinished_requests():
            self.step()

    def profile_steps(self, sizes: list[int], periods: int = 3, stop_above_s: float | None = None,
                      should_stop: Callable[[], bool] | None = None) -> tuple[tuple[int, float], ...]:
        """Time the decode step period at each batch size in `sizes` (ascending; the median of
        `periods` periods each, short throwaway requests, the fault-injection seam off), up to
        the first size whose period exceeds `stop_above_s`, or until `should_stop()` (asked
        between steps: someone else needs the engine; that size's requests are aborted).
        Returns ((rows, seconds), ...) of the sizes completed. On an idle engine only (after
        warm_up): the real-time admission's idle profile."""
        hook, self._before_step = self._before_step, None
        measured = []
        try:
            for rows in sizes:
                ids = [f"__profile__/{rows}/{i}" for i in range(rows)]
                for i, request_id in enumerate(ids):
                    self.add_request(request_id, "Warm up.", GenerationParams(max_frames=periods + 3, seed=i))
                seen, stopped = [], False
                while self.has_unfinished_requests():
                    if not stopped and should_stop is not None and should_stop():
                        stopped = True
                        for request_id in ids:
                            self.abort_request(request_id)
                    self.step()
                    if self._period[0] == rows:  # the previous step's, timed at this one's start
                        seen.append(self._period[1])
                    self._period = (0, 0.0)
                if stopped:
                    break
                if seen:
                    measured.append((rows, statistics.median(seen)))
                    if stop_above_s is not None and measured[-1][1] > stop_above_s:
                        break
        finally:
            self._before_step = hook
        return tuple(measured)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    def stats(self) -> EngineStats:
        sched = self.scheduler
        decodes, frames = self.runner.num_replays()
        return EngineStats(
            num_running=len(sched.running),
            num_waiting=len(sched.waiting),
            num_kv_slots_used=sched.num_slots - sched.num_free_slots,
            num_kv_slots_total=sched.num_slots,
            last_step_s=self._last_step_s,
            last_batch_size=self._last_batch_size,
            num_steps=self._num_steps,
            num_frames_total=sched.num_frames_total,
            num_prompt_tokens_total=sched.num_prompt_tokens_total,
            num_prefix_hits=self._num_prefix_hits,
            num_cached_tokens_total=sched.num_cached_tokens_total,
            num_finished=tuple(sched.num_finished.items()),
            capture_mode=self.runner.capture_mode,
            num_captured_decodes=decodes,
            num_captured_frames=frames,
            num_paused=sched.num_paused,
            period_batch=self._period[0],
            period_s=self._period[1],
            last_num_prefills=self._last_shape[0],
            last_num_decodes=self._last_shape[1],
        )


def build_engine(config: EngineConfig, before_step: StepHook | None = None) -> Engine:
    """Load the configured model and build its engine (`before_step`: see Engine)."""
    return Engine(load_model(config.model, config.device, config.dtype), config, before_step)
