"""Which requests run this step. Owns the waiting queue and the KV slots; never touches torch.

Requests are admitted in FIFO order while a KV slot is free. An admitted request first
prefills its prompt, in chunks that share a per-step token budget (so a long voice prompt
does not stall running streams), then decodes one frame per step until it finishes.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

from .params import FinishReason, GenerationParams, RequestStatus
from .prompt import PromptTokens


@dataclass(eq=False)
class Request:
    request_id: str
    prompt: PromptTokens
    params: GenerationParams
    seed: int
    max_frames: int
    status: RequestStatus = RequestStatus.WAITING
    slot: int = -1
    num_prefilled: int = 0  # prompt positions already in the KV cache
    num_cached: int = 0  # leading prompt positions whose KV comes from the prefix cache
    prefix: object | None = None  # the runner's cached KV for those positions (opaque here)
    num_frames: int = 0  # frames sampled so far
    finish_reason: FinishReason | None = None

    @property
    def num_prompt(self) -> int:
        return len(self.prompt)


@dataclass
class PrefillChunk:
    request: Request
    start: int
    length: int

    @property
    def is_last(self) -> bool:
        return self.start + self.length == self.request.num_prompt


@dataclass
class SchedulerOutput:
    prefills: list[PrefillChunk] = field(default_factory=list)
    decodes: list[Request] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.prefills and not self.decodes


class Scheduler:
    def __init__(self, num_slots: int, max_prefill_tokens: int) -> None:
        self.max_prefill_tokens = max_prefill_tokens
        self.num_slots = num_slots
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # admitted, holding a slot, in admission order
        self._free_slots = list(range(num_slots))

    @property
    def num_free_slots(self) -> int:
        return len(self._free_slots)

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def schedule(self) -> SchedulerOutput:
        """Admit waiting requests into free slots, then split the prefill budget FIFO."""
        while self.waiting and self._free_slots:
            req = self.waiting.popleft()
            req.slot = heapq.heappop(self._free_slots)
            req.status = RequestStatus.PREFILLING
            self.running.append(req)
        out = SchedulerOutput()
        budget = self.max_prefill_tokens
        for req in self.running:
            if req.status is RequestStatus.DECODING:
                out.decodes.append(req)
            elif budget > 0:
                length = min(req.num_prompt - req.num_prefilled, budget)
                out.prefills.append(PrefillChunk(req, req.num_prefilled, length))
                budget -= length
        return out

    def finish(self, request: Request, reason: FinishReason) -> None:
        """End a request wherever it is; its slot (if any) is free for the next step."""
        if request.status is RequestStatus.WAITING:
            self.waiting.remove(request)
        elif request.status is not RequestStatus.FINISHED:
            self.running.remove(request)
            heapq.heappush(self._free_slots, request.slot)
        request.status = RequestStatus.FINISHED
        request.finish_reason = reason
