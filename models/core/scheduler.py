"""Which requests run this step, and what their results mean. Owns the requests, the waiting
queue and the KV slots; never touches torch.

Policy: requests are admitted in FIFO order while a KV slot is free. An admitted request
first prefills its prompt, in chunks that share a per-step token budget (so a long voice
prompt does not stall running streams; earlier requests take the budget first), then
decodes one frame per step. Batch-priority requests run only as far as `batch_rows` allows
(given the interactive requests running, it says how many batch rows may run this step;
None: all): the others are paused for the step, keeping their slot and KV, and resume where
they stopped (their codes are the same: sampling is keyed by frame index, not by step). After the runner ran a step, `update_from_output` advances every
request it touched and ends those whose frame was the EOS frame or whose frame cap is
reached; aborted requests are ended at once (slot freed) and reported by the next update.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..params import FinishReason, StepOutput, is_eos_frame
from .request import Request, RequestStatus


@dataclass(frozen=True)
class PrefillChunk:
    request: Request
    start: int
    length: int

    @property
    def is_last(self) -> bool:
        return self.start + self.length == self.request.num_prompt


@dataclass(frozen=True)
class SchedulerOutput:
    prefills: list[PrefillChunk] = field(default_factory=list)
    decodes: list[Request] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.prefills and not self.decodes


@dataclass(frozen=True)
class RunnerOutput:
    """The frames one step sampled: `codes[i]` (32 ids) belongs to `requests[i]`. Order:
    the decoding rows first (as scheduled), then the requests whose prefill completed."""

    requests: list[Request] = field(default_factory=list)
    codes: list[list[int]] = field(default_factory=list)


class Scheduler:
    def __init__(self, num_slots: int, max_prefill_tokens: int,
                 batch_rows: Callable[[int], int | None] | None = None) -> None:
        """`batch_rows(num_interactive)`: how many batch-priority rows may run in a step with
        that many interactive rows (None: no limit); read once per schedule."""
        self.max_prefill_tokens = max_prefill_tokens
        self.batch_rows = batch_rows
        self.num_paused = 0  # batch requests the latest schedule left out
        self.num_slots = num_slots
        self.requests: dict[str, Request] = {}  # every unfinished request, and aborted ones until reported
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # admitted, holding a slot, in admission order
        self._free_slots = list(range(num_slots))
        self._aborted: list[Request] = []
        self.num_frames_total = 0
        self.num_prompt_tokens_total = 0  # prompt positions prefilled
        self.num_cached_tokens_total = 0  # prompt positions taken from a computed prefix instead
        self.num_finished = {"eos": 0, "length": 0, "abort": 0, "error": 0}  # how requests ended

    @property
    def num_free_slots(self) -> int:
        return len(self._free_slots)

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    def add(self, request: Request) -> None:
        """Queue a request (FIFO). Raises ValueError for an id already in the engine."""
        if request.request_id in self.requests:
            raise ValueError(f"request_id: {request.request_id!r} is already in the engine")
        self.requests[request.request_id] = request
        self.waiting.append(request)
        self.num_cached_tokens_total += request.num_cached

    def abort(self, request_id: str) -> None:
        """End a request now (slot freed); the next update reports it. Unknown ids are ignored."""
        req = self.requests.get(request_id)
        if req is not None and req.status is not RequestStatus.FINISHED:
            self._finish(req, FinishReason.ABORT)
            self._aborted.append(req)

    def abort_all(self) -> list[str]:
        """End every request at once, reporting none of them (after a failed step): each
        unfinished one is counted as ended by an error."""
        ids = list(self.requests)
        self.num_finished["error"] += sum(r.status is not RequestStatus.FINISHED for r in self.requests.values())
        for req in self.requests.values():
            if req.status is not RequestStatus.FINISHED:
                self._finish(req, FinishReason.ABORT)
        self.requests.clear()
        self._aborted.clear()
        return ids

    def schedule(self) -> SchedulerOutput:
        """Admit waiting requests into free slots, then split the prefill budget FIFO."""
        while self.waiting and self._free_slots:
            req = self.waiting.popleft()
            req.slot = heapq.heappop(self._free_slots)
            req.status = RequestStatus.PREFILLING
            self.running.append(req)
        prefills, decodes = [], []
        budget = self.max_prefill_tokens
        batch_left = self._batch_limit()
        self.num_paused = 0
        for req in self.running:
            if req.priority == "batch" and batch_left is not None:
                if batch_left <= 0:
                    self.num_paused += 1
                    continue
                batch_left -= 1
            if req.status is RequestStatus.DECODING:
                decodes.append(req)
            elif budget > 0:
                length = min(req.num_prompt - req.num_prefilled, budget)
                prefills.append(PrefillChunk(req, req.num_prefilled, length))
                budget -= length
        return SchedulerOutput(prefills, decodes)

    def _batch_limit(self) -> int | None:
        if self.batch_rows is None:
            return None
        limit = self.batch_rows(sum(r.priority != "batch" for r in self.running))
        return None if limit is None else max(0, limit)

    def update_from_output(self, scheduled: SchedulerOutput, output: RunnerOutput) -> list[StepOutput]:
        """Advance what ran, end what finished. Returns one StepOutput per request that got a
        frame or ended (aborted ones first); finished requests appear once, with the reason."""
        outputs = [self._report(r, []) for r in self._aborted]
        self._aborted.clear()
        for chunk in scheduled.prefills:
            chunk.request.num_prefilled += chunk.length
            self.num_prompt_tokens_total += chunk.length
        self.num_frames_total += len(output.requests)
        for req, frame in zip(output.requests, output.codes, strict=True):
            req.status = RequestStatus.DECODING
            req.num_frames += 1
            if is_eos_frame(frame):  # the EOS frame itself is not audio
                self._finish(req, FinishReason.EOS)
                outputs.append(self._report(req, []))
            elif req.num_frames >= req.max_frames:
                self._finish(req, FinishReason.LENGTH)
                outputs.append(self._report(req, [frame]))
            else:
                outputs.append(StepOutput(req.request_id, [frame]))
        return outputs

    def _finish(self, request: Request, reason: FinishReason) -> None:
        """End a request wherever it is; its slot (if any) is free for the next step."""
        if request.status is RequestStatus.WAITING:
            self.waiting.remove(request)
        elif request.status is not RequestStatus.FINISHED:
            self.running.remove(request)
            heapq.heappush(self._free_slots, request.slot)
        request.status = RequestStatus.FINISHED
        request.finish_reason = reason

    def _report(self, request: Request, frames: list[list[int]]) -> StepOutput:
        del self.requests[request.request_id]
        self.num_finished[request.finish_reason.value] += 1
        return StepOutput(request.request_id, frames, True, request.finish_reason)
