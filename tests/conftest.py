import io
import random
import re
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile
import torch

from models import Engine, EngineConfig, load_model


@pytest.fixture(scope="session")
def tiny():
    """The embedded tiny model in float32 on CPU (tight numerics against transformers)."""
    return load_model("csm-tiny", device="cpu", dtype="float32")


@pytest.fixture
def make_engine(tiny):
    """make_engine(before_step=None, **EngineConfig overrides): an engine over the tiny model."""

    def make(before_step=None, **overrides) -> Engine:
        return Engine(tiny, EngineConfig(**{"max_num_seqs": 4, **overrides}), before_step)

    return make


def run_to_end(engine: Engine, max_steps: int = 10_000) -> dict:
    """Step until idle; returns {request_id: (frames, finish_reason)}."""
    frames: dict[str, list] = {}
    reasons: dict[str, object] = {}
    for _ in range(max_steps):
        if not engine.has_unfinished_requests():
            break
        for out in engine.step():
            frames.setdefault(out.request_id, []).extend(out.frames)
            if out.is_finished:
                reasons[out.request_id] = out.finish_reason
    return {rid: (frames.get(rid, []), reasons.get(rid)) for rid in set(frames) | set(reasons)}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def free_port() -> int:
    """A free TCP port on loopback for a test server, from 20000-30000: outside Ray's worker
    ports (10002-19999) and the kernel's ephemeral range, which other processes race for."""
    rng = random.Random()
    for _ in range(100):
        port = rng.randrange(20_000, 30_000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-30000")


def fan_out(fn: Callable, args: Sequence, timeout_s: float = 300) -> list:
    """Call fn(arg) for every arg at once, each on its own thread (concurrent clients);
    returns the results in order and re-raises the first error."""
    with ThreadPoolExecutor(max_workers=len(args)) as pool:
        return list(pool.map(fn, args, timeout=timeout_s))


def _uses_ray(item) -> bool:
    params = getattr(getattr(item, "callspec", None), "params", {})
    return "ray_serve" in getattr(item, "fixturenames", ()) or "ray" in params.values()


def pytest_collection_modifyitems(items):
    """Tests on Ray run last (stable order otherwise): Ray starts once, late, and its idle
    processes do not slow every other test down."""
    items.sort(key=_uses_ray)


@pytest.fixture(scope="session")
def ray_serve():
    """Ray + Serve on loopback for the whole session (started by the first test that needs it)."""
    pytest.importorskip("ray")
    from tests.ray_serve import ray_runtime

    with ray_runtime(free_port) as runtime:
        yield runtime


def wait_engine_idle(replica, timeout_s: float = 5) -> None:
    """An in-process replica's engine stays idle (no KV slot, nothing waiting) for half a
    second: a long text's segments follow each other, so one idle sample between two of them
    proves nothing."""
    deadline, idle_since = time.monotonic() + timeout_s, None
    while True:
        stats = replica.stats().engine
        now = time.monotonic()
        if stats.num_kv_slots_used or stats.num_waiting:
            idle_since = None
        elif idle_since is None:
            idle_since = now
        if idle_since is not None and now - idle_since >= 0.5:
            return
        assert now < deadline, f"still busy: {stats}"
        time.sleep(0.02)


LEAKS = re.compile(
    r'Traceback|File "|pid=|ip=|actor_id|ActorID|node_id|NodeID|\x1b\[|/opt/|/tmp/|/work/|/root/|site-packages|\.py\b'
    r"|\b(?:\d{1,3}\.){3}\d{1,3}\b"  # a bare IPv4 address (a node's, a pod's)
    r"|\b[0-9a-f]{24,}\b")  # a long hex id (Ray's node ids: 56, actor and job ids: 32 and more)
_OWN_ID = re.compile(r"request id [A-Za-z0-9._:-]+")  # a 500 names the client's own request id: not a leak


def assert_no_leak(text: str, allowed: tuple[str, ...] = ()) -> None:
    """No traceback, process or node detail (pid, IP address, node or actor id), colour code or
    filesystem path in what a client is told; the request's own id, which 500s name on
    purpose, and `allowed` strings are left out of the check."""
    for value in allowed:
        text = text.replace(value, "")
    assert not LEAKS.search(_OWN_ID.sub("", text)), text


@pytest.fixture(autouse=True, scope="session")
def _no_leak_in_any_error():
    """Every test: every error response any httpx client gets (plain httpx, the openai SDK, in
    process or through Ray) and every error tritonclient raises (HTTP and gRPC, unary and in a
    stream) goes through assert_no_leak, whatever else the test checks."""
    import httpx
    import tritonclient.utils

    real_send, real_async_send = httpx.Client.send, httpx.AsyncClient.send
    real_init = tritonclient.utils.InferenceServerException.__init__

    def check(response: httpx.Response) -> None:
        """The request's own id and its own URL path segments (an unknown voice id it asked
        for, echoed back) are the client's words, not a leak."""
        if response.status_code >= 400:
            own = [response.headers.get("x-request-id"), *httpx.URL(str(response.request.url)).path.split("/")]
            assert_no_leak(response.text, tuple(sorted(filter(None, own), key=len, reverse=True)))

    def send(self, request, **kw):
        response = real_send(self, request, **kw)
        if response.status_code >= 400:
            response.read()
            check(response)
        return response

    async def async_send(self, request, **kw):
        response = await real_async_send(self, request, **kw)
        if response.status_code >= 400:
            await response.aread()
            check(response)
        return response

    def init(self, msg, status=None, debug_details=None):
        assert_no_leak(str(msg or ""))
        real_init(self, msg, status, debug_details)

    httpx.Client.send, httpx.AsyncClient.send = send, async_send
    tritonclient.utils.InferenceServerException.__init__ = init
    try:
        yield
    finally:
        httpx.Client.send, httpx.AsyncClient.send = real_send, real_async_send
        tritonclient.utils.InferenceServerException.__init__ = real_init


def wav_bytes(seconds: float, rate: int = 16_000) -> bytes:
    """A mono 16-bit WAV of a quiet tone: a voice sample for upload tests."""
    buf = io.BytesIO()
    soundfile.write(buf, (0.2 * np.sin(np.arange(int(seconds * rate)) / 5)).astype(np.float32), rate,
                    format="WAV", subtype="PCM_16")
    return buf.getvalue()
