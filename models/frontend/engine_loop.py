"""The engine's step loop on a thread of its own, with an asyncio face: the thread owns the
Engine; callers `async for` over a request's StepOutputs. Cancelling (or leaving) the
iterator aborts the request, and its slot is free at the next step. Framework-free: a
replica (the `replica` package) builds on this.

Ownership: the loop thread owns the engine, the map of open streams and the stats snapshot;
the event loop talks to it only through typed commands in the inbox, and the loop thread
answers only through each stream's asyncio queue (call_soon_threadsafe) or a future.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from ..core.prompt import Prefix, PromptContext
from ..core.request import Request
from ..core.threads import apply as apply_threads
from ..engine import Engine
from ..errors import EngineDeadError, EngineStepError
from ..params import EngineStats, GenerationParams, Priority, Segment, StepOutput

log = logging.getLogger(__name__)


NO_CONTEXT = PromptContext()  # a text that follows nothing


@dataclass(frozen=True)
class _Stream:
    """Where a request's outputs go: an asyncio queue on the caller's event loop."""

    loop: asyncio.AbstractEventLoop
    outputs: asyncio.Queue

    def put(self, item: StepOutput | BaseException) -> bool:
        """Hand `item` to the caller's loop; False if that loop is closed (nobody is listening)."""
        try:
            self.loop.call_soon_threadsafe(self.outputs.put_nowait, item)
        except RuntimeError:  # the caller's event loop closed under its request
            return False
        return True


@dataclass(frozen=True)
class AddRequest:
    request: Request
    stream: _Stream


@dataclass(frozen=True)
class AbortRequest:
    request_id: str


@dataclass(frozen=True)
class ComputePrefix:
    """Compute context segments' prefix (from `base` if given); the Prefix goes to `future`."""

    context: tuple[Segment, ...]
    base: Prefix | None
    future: concurrent.futures.Future


@dataclass(frozen=True)
class CallEngine:
    """Run `fn(engine)` between steps; its result (or error) goes to `future`."""

    fn: Callable[[Engine], object]
    future: concurrent.futures.Future


Command = AddRequest | AbortRequest | ComputePrefix | CallEngine


class EngineLoop:
    def __init__(
        self, engine: Engine, idle_wait_s: float = 0.5, on_step: Callable[[EngineStats], None] | None = None,
        threads: int | None = None,
    ) -> None:
        """`on_step(stats)` runs on the loop thread after every step (metrics); its errors are
        logged. `threads`: the loop thread's intra-op thread count (models/core/threads.py)."""
        self.engine = engine
        self._threads = threads
        self._on_step = on_step
        self._idle_wait_s = idle_wait_s
        self._inbox: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._streams: dict[str, _Stream] = {}  # loop thread only
        self._stats = engine.stats()  # replaced (never mutated) by the loop thread
        self._stop = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="csm-engine-loop", daemon=True)
        self._thread.start()

    @property
    def device_type(self) -> str:
        """The engine's device type ("cpu", "cuda", "npu"); immutable, so any thread may read it."""
        return self.engine.loaded.device.type

    @property
    def max_num_seqs(self) -> int:
        return self.engine.config.max_num_seqs

    @property
    def thread_id(self) -> int | None:
        """The loop thread's native id (its CPU priority is its own on Linux)."""
        return self._thread.native_id

    def has_commands(self) -> bool:
        """Whether commands wait in the inbox (any thread; the engine's work in progress, a
        profile, may yield to them)."""
        return not self._inbox.empty()

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive() and not self._stop

    def check_health(self) -> None:
        """Raise EngineDeadError if the loop thread has died or was shut down."""
        if not self.is_alive:
            raise EngineDeadError(f"engine loop is not running: {self._error!r}")

    async def generate(
        self, request_id: str, text: str, params: GenerationParams | None = None,
        context: PromptContext = NO_CONTEXT, frame_cap: int | None = None, priority: Priority = "interactive",
    ) -> AsyncIterator[StepOutput]:
        """Stream a request's outputs, one StepOutput per step that produced frames, the last
        with is_finished (arguments as Engine.prepare; `context`: its segments and prefix). Bad
        input raises RequestError before anything is queued."""
        self.check_health()
        request = self.engine.prepare(request_id, text, params, context.segments, context.prefix, frame_cap, priority)
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        self._send(AddRequest(request, stream))
        finished = False
        try:
            while not finished:
                item = await stream.outputs.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.is_finished
                yield item
        finally:
            if not finished:
                self._send(AbortRequest(request_id))

    async def compute_prefix(self, context: tuple[Segment, ...], base: Prefix | None = None) -> Prefix:
        """Compute a context prefix on the engine thread, between steps (Engine.compute_prefix)."""
        self.check_health()
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._send(ComputePrefix(tuple(context), base, future))
        return await asyncio.wrap_future(future)

    def call(self, fn: Callable[[Engine], object]) -> concurrent.futures.Future:
        """Run `fn(engine)` on the loop thread between steps (with that thread's intra-op
        threads, as the steps run); any thread may wait on the returned future."""
        self.check_health()
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._send(CallEngine(fn, future))
        return future

    def stats(self) -> EngineStats:
        """The snapshot taken after the loop thread's latest step."""
        return self._stats

    def shutdown(self, timeout_s: float = 5.0) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout_s)

    # ---- the loop thread --------------------------------------------------------------------
    def _send(self, command: Command) -> None:
        self._inbox.put(command)
        self._wake.set()
        if not self._thread.is_alive():  # nobody will read it: answer it here
            self._refuse_inbox()

    def _queued(self) -> Iterator[Command]:
        """Take every command in the inbox now, in order (each is taken once, by one thread)."""
        while True:
            try:
                yield self._inbox.get_nowait()
            except queue.Empty:
                return

    def _refuse_inbox(self) -> None:
        """Answer every queued command with EngineDeadError (the loop has stopped)."""
        for command in self._queued():
            error = EngineDeadError("engine loop stopped")
            match command:
                case AddRequest(_, stream):
                    stream.put(error)
                case ComputePrefix(_, _, future) | CallEngine(_, future):
                    if future.set_running_or_notify_cancel():  # a caller that gave up is not told
                        future.set_exception(error)

    def _drain_inbox(self) -> None:
        for command in self._queued():
            match command:
                case AddRequest(request, stream):
                    self._add(request, stream)
                case AbortRequest(request_id):
                    self._streams.pop(request_id, None)
                    self.engine.abort_request(request_id)
                case ComputePrefix(context, base, future):
                    if not future.set_running_or_notify_cancel():  # cancelled while queued: nothing to do
                        continue
                    try:
                        future.set_result(self.engine.compute_prefix(context, base))
                    except Exception as e:
                        future.set_exception(e)
                case CallEngine(fn, future):
                    if not future.set_running_or_notify_cancel():
                        continue
                    try:
                        future.set_result(fn(self.engine))
                    except Exception as e:
                        future.set_exception(e)

    def _add(self, request: Request, stream: _Stream) -> None:
        if request.request_id in self._streams:
            stream.put(ValueError(f"request_id: {request.request_id!r} is already in flight"))
            return
        try:
            self.engine.add_prepared(request)
        except ValueError as e:
            stream.put(e)
            return
        self._streams[request.request_id] = stream

    def _run(self) -> None:
        try:
            if self._threads:
                apply_threads(self._threads)
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
                    self._fail_all(EngineStepError(f"engine step failed: {type(e).__name__}: {e}"))
                    continue
                self._deliver(outputs)
        except BaseException as e:  # pragma: no cover - reported through check_health
            self._error = e
            log.exception("engine loop died")
            raise
        finally:
            self._stop = True
            self._fail_all(EngineDeadError("engine loop stopped"))
            self._refuse_inbox()

    def _deliver(self, outputs: list[StepOutput]) -> None:
        self._stats = self.engine.stats()  # first: a caller that sees an output sees its step's stats
        for out in outputs:
            stream = self._streams.pop(out.request_id, None) if out.is_finished else self._streams.get(out.request_id)
            if stream is not None and not stream.put(out) and not out.is_finished:
                self._streams.pop(out.request_id, None)  # its caller's loop is gone: free the slot
                self.engine.abort_request(out.request_id)
        if self._on_step is not None:
            try:
                self._on_step(self._stats)
            except Exception:
                log.exception("on_step callback failed")

    def _fail_all(self, error: BaseException) -> None:
        self.engine.abort_all()
        self._stats = self.engine.stats()  # first: a caller that sees the error sees its slot freed
        streams, self._streams = list(self._streams.values()), {}
        for stream in streams:
            stream.put(error)
