"""Captured decode steps (models/graphs.py) give the same codes as eager steps.

torch.compile (inductor) runs on CPU, so CI checks the compiled path for real, with the same
buckets, padding rows and static inputs the device graphs use. Device graphs (CUDA graphs,
NPU graphs) need the device: here only their capture recipe is checked, on a stand-in."""

import contextlib
import types

import pytest
import torch
from torch._dynamo.utils import counters

from models import Engine, EngineConfig, GenerationParams
from models.runner.graphs import Capturer, bucket_for, resolve_capture

# Staggered joins: steps mix prefill and decode rows and batches of 1 to 3 rows; sampled and
# greedy rows with different top-k share steps.
REQUESTS = [
    ("a", "Captured steps speak the same.", dict(seed=1, temperature=0.9, top_k=50, max_frames=14), 0),
    ("b", "Greedy row.", dict(seed=2, temperature=0.0, max_frames=9), 2),
    ("c", "A third voice joins later on.", dict(seed=3, temperature=1.2, top_k=7, max_frames=12), 4),
]


def _run(engine) -> dict:
    """Add REQUESTS at their steps; return {id: frames}."""
    pending, frames, step = list(REQUESTS), {}, 0
    while pending or engine.has_unfinished_requests():
        while pending and pending[0][3] <= step:
            rid, text, params, _ = pending.pop(0)
            engine.add_request(rid, text, GenerationParams(**params))
        for out in engine.step():
            frames.setdefault(out.request_id, []).extend(out.frames)
        step += 1
    return frames


def _engine(tiny, **cfg):
    return Engine(tiny, EngineConfig(max_num_seqs=4, max_seq_len=256, max_frames_cap=200, **cfg))


def test_compiled_steps_give_the_same_codes_as_eager(tiny):
    """Batches of 1-2 rows run the compiled blocks in bucket 2 (padded), 3 rows the eager
    step: the codes equal an eager engine's, row for row."""
    eager = _engine(tiny, enforce_eager=True, capture="compile")
    eager.warm_up()
    assert eager.stats().capture_mode is None
    counters.clear()
    compiled = _engine(tiny, capture="compile", capture_batch_sizes=[2])
    compiled.warm_up()
    assert not counters["graph_break"], dict(counters["graph_break"])  # whole blocks, no fallbacks
    before = compiled.stats()
    assert before.capture_mode == "compile"
    want, got = _run(eager), _run(compiled)
    after = compiled.stats()
    decodes = after.num_captured_decodes - before.num_captured_decodes
    frames = after.num_captured_frames - before.num_captured_frames
    steps_before = before.num_steps
    assert decodes > 5 and frames > 5  # the compiled path ran...
    assert compiled.stats().num_steps - steps_before - frames > 5  # ...and so did the eager one
    assert got == want and all(len(got[r[0]]) == r[2]["max_frames"] for r in REQUESTS)


class _FakeDevice:
    """torch.cuda / torch.npu as graphs.py uses them: streams, a graph pool, graph capture."""

    def __init__(self):
        self.current, self.captures = "main", []
        dev = self

        class Graph:
            def replay(self):
                dev.captures[-1]["replays"] += 1

        self.Graph = Graph

    def Stream(self):
        return types.SimpleNamespace(name="side", wait_stream=lambda s: None)

    def current_stream(self):
        return types.SimpleNamespace(name=self.current, wait_stream=lambda s: None)

    def graph_pool_handle(self):
        return "pool"

    @contextlib.contextmanager
    def stream(self, s):
        before, self.current = self.current, s.name
        yield
        self.current = before

    @contextlib.contextmanager
    def graph(self, g, pool):
        self.captures.append({"pool": pool, "replays": 0})
        before, self.current = self.current, "capturing"
        yield
        self.current = before


def test_device_graph_recipe_on_a_stand_in_device():
    """The CUDA-graph recipe (needs a device, so not run here for real): warm-up runs happen
    on a side stream, not the main one; one capture into the shared pool; replay returns the
    output tensor captured once (the static-output contract the runner relies on)."""
    fake = _FakeDevice()
    capturer = Capturer.__new__(Capturer)
    capturer.mode, capturer.device, capturer._dev, capturer._graph_cls, capturer._pool = (
        "graphs", torch.device("cpu"), fake, fake.Graph, fake.graph_pool_handle())
    x, streams = torch.ones(3), []

    def fn(t):
        streams.append(fake.current)
        return t * 2

    replay = capturer.capture(fn, x)
    assert streams[:-1] and set(streams[:-1]) == {"side"} and streams[-1] == "capturing"
    assert fake.captures == [{"pool": "pool", "replays": 0}]
    out = replay()
    assert out is replay() and torch.equal(out, x * 2) and fake.captures[0]["replays"] == 2


def test_resolve_capture_and_buckets():
    cpu = torch.device("cpu")
    assert resolve_capture("auto", cpu, False) is None  # eager on CPU unless asked
    assert resolve_capture("compile", cpu, False) == "compile"
    assert resolve_capture("compile", cpu, True) is None  # enforce_eager wins
    assert resolve_capture("auto", torch.device("cuda"), False) == "graphs"
    with pytest.raises(ValueError, match="graphs need cuda or npu"):
        resolve_capture("graphs", cpu, False)
    assert EngineConfig(max_num_seqs=64).batch_buckets() == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]
    assert EngineConfig(max_num_seqs=6).batch_buckets() == [1, 2, 4, 6]
    assert bucket_for(5, [1, 2, 4, 8]) == 8 and bucket_for(9, [1, 2, 4, 8]) is None
    with pytest.raises(ValueError, match="capture_batch_sizes"):
        EngineConfig(max_num_seqs=4, capture_batch_sizes=[8])
