"""The ingress's view of the engine replicas' real-time headroom: refuse at once when none has any.

A replica's admission decides every stream (replica/admission.py), but a stream refused there
has cost a Ray round trip and the replica's own event loop: under a burst (128 requests at
once) the refusals take the GIL and the cores from the engine's steps, and the admitted
streams stutter. So the ingress keeps a view: every replica's headroom (the interactive streams
it could start now) and when it expects more, asked of all of them while requests come (one
small call each, Serve's broadcast; at most every `fresh_s` while streams are let through, every
`refuse_fresh_s` while they are refused), and counts the interactive streams it sent since. An interactive stream beyond that is refused here, with the soonest
expected start as its Retry-After: it never reaches a replica without headroom, nor Serve's
queue. Within the headroom the router picks the replica (router.py) and the replica's
admission still has the last word (the view is a fraction of a second old). While the view is
unknown (no replica answered) every stream goes on to a replica. Batch streams are not gated
here (they wait for rows at a replica). Event-loop state only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Headroom:
    """What one replica reports: interactive streams it could start now, and in how many
    seconds it expects to start one more beyond those (None: unknown)."""

    streams: int
    expected_start_s: float | None


@dataclass(frozen=True)
class Verdict:
    admitted: bool
    retry_after_s: float | None = None  # refused: when headroom is expected (None: unknown)


class HeadroomView:
    def __init__(self, poll: Callable[[], Awaitable[list[Headroom]]], fresh_s: float = 0.2,
                 refuse_fresh_s: float = 0.05, clock: Callable[[], float] = time.monotonic) -> None:
        """`poll()`: every running replica's Headroom (raises when none answers). A stream is
        let through on a view up to `fresh_s` old, refused only on one up to `refuse_fresh_s`
        old (a stream that ended since the older view has freed its place)."""
        self._poll, self.fresh_s, self.refuse_fresh_s, self._clock = poll, fresh_s, refuse_fresh_s, clock
        self._view: list[Headroom] | None = None
        self._at = -float("inf")
        self._sent = 0  # interactive streams let through since the view was taken
        self._refresh: asyncio.Task | None = None

    async def admit(self) -> Verdict:
        """Whether one more interactive stream may go on to a replica now."""
        view = await self._fresh(self.fresh_s)
        if view is not None and not self._has_room(view):
            view = await self._fresh(self.refuse_fresh_s)
        if view is None:
            return Verdict(True)
        if self._has_room(view):
            self._sent += 1
            return Verdict(True)
        waits = [h.expected_start_s for h in view if h.expected_start_s is not None]
        return Verdict(False, min(waits) if waits else None)

    def _has_room(self, view: list[Headroom]) -> bool:
        return self._sent < sum(max(0, h.streams) for h in view)

    async def _fresh(self, max_age_s: float) -> list[Headroom] | None:
        if self._clock() - self._at <= max_age_s:
            return self._view
        if self._refresh is None or self._refresh.done():  # one poll at a time, shared by its waiters
            self._refresh = asyncio.ensure_future(self._take())
        await asyncio.shield(self._refresh)
        return self._view

    async def _take(self) -> None:
        try:
            view = await self._poll()
        except Exception as e:  # no replica answered: no view, every stream goes on
            log.debug("headroom poll failed: %s", e)
            view = None
        self._view, self._at, self._sent = (view or None), self._clock(), 0
