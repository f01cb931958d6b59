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
from models.graphs import Capturer, bucket_for, resolve_capture

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


def _count_replays(engine) -> dict:
    counts = {"decode": 0, "sample": 0}
    for kind, graphs in (("decode", engine.runner._decode_graphs), ("sample", engine.runner._sample_graphs)):
        for key, (replay, *inputs) in list(graphs.items()):
            def counted(replay=replay, kind=kind):
                counts[kind] += 1
                return replay()
            graphs[key] = (counted, *inputs)
    return counts


def _engine(tiny, **cfg):
    return Engine(tiny, EngineConfig(max_num_seqs=4, max_seq_len=256, max_frames_cap=200, **cfg))


def test_compiled_steps_give_the_same_codes_as_eager(tiny):
    """Batches of 1-2 rows run the compiled blocks in bucket 2 (padded), 3 rows the eager
    step: the codes equal an eager engine's, row for row."""
    eager = _engine(tiny, enforce_eager=True, capture="compile")
    eager.warm_up()
    assert eager.runner.capture_mode is None
    counters.clear()
    compiled = _engine(tiny, capture="compile", capture_batch_sizes=[2])
    compiled.warm_up()
    assert not counters["graph_break"], dict(counters["graph_break"])  # whole blocks, no fallbacks
    assert compiled.runner.capture_mode == "compile"
    assert set(compiled.runner._decode_graphs) == {(2, 256)} and set(compiled.runner._sample_graphs) == {2}
    counts = _count_replays(compiled)
    want, got = _run(eager), _run(compiled)
    assert counts["decode"] > 5 and counts["sample"] > 5  # the compiled path ran...
    assert compiled.stats().num_steps - counts["sample"] > 5  # ...and so did the eager one
    assert got == want and all(len(got[r[0]]) == r[2]["max_frames"] for r in REQUESTS)


class _FakeDevice:
    """torch.cuda / torch.npu as graphs.py uses them, recording what happens where."""

    def __init__(self):
        self.events = []
        dev = self

        class Graph:
            def replay(self):
                dev.events.append("replay")

        self.Graph = Graph

    def _stream(self, name):
        return types.SimpleNamespace(name=name, wait_stream=lambda s: self.events.append(f"{name} waits {s.name}"))

    def Stream(self):
        return self._stream("side")

    def current_stream(self):
        return self._stream("main")

    def graph_pool_handle(self):
        return "pool"

    @contextlib.contextmanager
    def stream(self, s):
        self.events.append(f"on {s.name}")
        yield
        self.events.append("off")

    @contextlib.contextmanager
    def graph(self, g, pool):
        self.events.append(f"capture into {pool}")
        yield
        self.events.append("captured")


def test_device_graph_recipe_on_a_stand_in_device():
    """The CUDA-graph recipe (needs a device, so not run here for real): two warm-up runs on a
    side stream, then one capture into the shared pool; replay replays and returns the
    output tensor captured once."""
    fake = _FakeDevice()
    capturer = Capturer.__new__(Capturer)
    capturer.mode, capturer.device, capturer._dev, capturer._graph_cls, capturer._pool = (
        "graphs", torch.device("cpu"), fake, fake.Graph, fake.graph_pool_handle())
    x = torch.ones(3)

    def fn(t):
        fake.events.append("run")
        return t * 2

    replay = capturer.capture(fn, x)
    assert fake.events == ["side waits main", "on side", "run", "run", "off", "main waits side",
                           "capture into pool", "run", "captured"]
    out = replay()
    assert fake.events[-1] == "replay" and out is replay() and torch.equal(out, x * 2)


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
