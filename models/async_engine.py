"""An asyncio front for the Engine: one background thread owns the engine and runs its step
loop; callers `async for` over a request's StepOutputs. Cancelling (or leaving) the iterator
aborts the request, and its slot is free at the next step. Framework-free: the Ray
deployment and any in-process server wrap this.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from .engine import Engine
from .params import EngineStats, GenerationParams, Segment, StepOutput

log = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The engine loop has stopped; no request can be served by this engine any more."""


class EngineStepError(RuntimeError):
    """A step failed (e.g. a device error); the requests in flight were ended."""


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    outputs: asyncio.Queue

    def put(self, item: StepOutput | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.outputs.put_nowait, item)


class AsyncEngine:
    def __init__(
        self, engine: Engine, idle_wait_s: float = 0.5, on_step: Callable[[EngineStats], None] | None = None
    ) -> None:
        """`on_step(stats)` runs on the loop thread after every step (metrics); its errors are logged."""
        self.engine = engine
        self._on_step = on_step
        self._idle_wait_s = idle_wait_s
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._streams: dict[str, _Stream] = {}
        self._stop = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="csm-engine-loop", daemon=True)
        self._thread.start()

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive() and not self._stop

    def check_health(self) -> None:
        """Raise EngineDeadError if the loop thread has died or was shut down."""
        if not self.is_alive:
            raise EngineDeadError(f"engine loop is not running: {self._error!r}")

    async def generate(
        self, request_id: str, prompt: str, params: GenerationParams | None = None
    ) -> AsyncIterator[StepOutput]:
        """Stream a request's outputs, one StepOutput per step that produced frames, the last
        with is_finished. Bad input raises ValueError before anything is queued."""
        self.check_health()
        req = self.engine.prepare(request_id, prompt, params)
        if request_id in self._streams:
            raise ValueError(f"request_id: {request_id!r} is already in flight")
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        self._streams[request_id] = stream
        self._send(("add", req))
        finished = False
        try:
            while True:
                item = await stream.outputs.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.is_finished
                yield item
                if finished:
                    return
        finally:
            if not finished:
                self._send(("abort", request_id))
            self._streams.pop(request_id, None)

    async def add_prefix(self, context: tuple[Segment, ...]) -> int:
        """Cache a voice prompt's KV on the engine thread (see Engine.add_prefix)."""
        return await self._on_loop("prefix", context)

    async def remove_prefix(self, context: tuple[Segment, ...]) -> None:
        """Forget a cached voice prompt on the engine thread (see Engine.remove_prefix)."""
        await self._on_loop("unprefix", context)

    async def _on_loop(self, kind: str, context: tuple[Segment, ...]):
        self.check_health()
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._send((kind, (tuple(context), future)))
        return await asyncio.wrap_future(future)

    def stats(self):
        return self.engine.stats()

    def shutdown(self, timeout_s: float = 5.0) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout_s)

    # ---- the loop thread --------------------------------------------------------------------
    def _send(self, command: tuple) -> None:
        self._inbox.put(command)
        self._wake.set()

    def _drain_inbox(self) -> None:
        while True:
            try:
                kind, arg = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                if arg.request_id not in self._streams:  # its caller already left
                    continue
                try:
                    self.engine.add_request(arg.request_id, arg)
                except ValueError as e:
                    self._deliver_error(arg.request_id, e)
            elif kind == "abort":
                self.engine.abort_request(arg)
            else:  # "prefix" / "unprefix": (context, future), here because the loop thread owns the engine
                context, future = arg
                try:
                    change = self.engine.add_prefix if kind == "prefix" else self.engine.remove_prefix
                    future.set_result(change(context))
                except Exception as e:
                    future.set_exception(e)

    def _deliver_error(self, request_id: str, error: BaseException) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            stream.put(error)

    def _run(self) -> None:
        try:
            while not self._stop:
                self._drain_inbox()
                if not self.engine.has_unfinished_requests():
                    self._wake.wait(self._idle_wait_s)
                    self._wake.clear()
                    continue
                try:
                    outputs = self.engine.step()
                except Exception as e:  # a failed step ends its requests, not the replica
                    log.exception("engine step failed; ending the requests in flight")
                    self._fail_all(EngineStepError(f"engine step failed: {e}"))
                    continue
                for out in outputs:
                    stream = self._streams.get(out.request_id)
                    if stream is not None:
                        stream.put(out)
                if self._on_step is not None:
                    try:
                        self._on_step(self.engine.stats())
                    except Exception:
                        log.exception("on_step callback failed")
        except BaseException as e:  # pragma: no cover - reported through check_health
            self._error = e
            log.exception("engine loop died")
            raise
        finally:
            self._stop = True
            self._fail_all(EngineDeadError("engine loop stopped"))

    def _fail_all(self, error: BaseException) -> None:
        self.engine.abort_all()
        for stream in list(self._streams.values()):
            stream.put(error)
