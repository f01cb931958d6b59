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


def _run(engine, replays: list | None = None) -> dict:
    """Add REQUESTS at their steps; return {id: frames}. `replays` gets, per step, how many
    captured decode steps and frame samplers it replayed."""
    pending, frames, step = list(REQUESTS), {}, 0
    while pending or engine.has_unfinished_requests():
        while pending and pending[0][3] <= step:
            rid, text, params, _ = pending.pop(0)
            engine.add_request(rid, text, GenerationParams(**params))
        before = engine.stats()
        for out in engine.step():
            frames.setdefault(out.request_id, []).extend(out.frames)
        after = engine.stats()
        if replays is not None:
            replays.append((after.num_captured_decodes - before.num_captured_decodes,
                            after.num_captured_frames - before.num_captured_frames))
        step += 1
    return frames


def _engine(tiny, **cfg):
    return Engine(tiny, EngineConfig(max_num_seqs=4, max_seq_len=256, max_frames_cap=200, **cfg))


def test_compiled_steps_give_the_same_codes_as_eager(tiny):
    """Batches of 1-2 rows run the compiled blocks in bucket 2 (padded), 3 rows the eager
    step: the codes equal an eager engine's, row for row. Decoding rows replay their whole
    frame; a completed prompt's frame replays the frame sampler."""
    eager = _engine(tiny, enforce_eager=True, capture="compile")
    eager.warm_up()
    assert eager.stats().capture_mode is None
    counters.clear()
    compiled = _engine(tiny, capture="compile", capture_batch_sizes=[2])
    compiled.warm_up()
    assert not counters["graph_break"], dict(counters["graph_break"])  # whole blocks, no fallbacks
    assert compiled.stats().capture_mode == "compile"
    replays: list[tuple[int, int]] = []
    want, got = _run(eager), _run(compiled, replays)
    assert sum(d == 1 for d, _ in replays) > 5  # whole frames replayed (one decode and its frame)...
    assert sum(f - d == 1 for d, f in replays) == len(REQUESTS)  # ...each join's first frame too...
    assert sum(d == f == 0 for d, f in replays) > 5  # ...and steps of 3 rows ran eagerly
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


class _ReplayingCapturer:
    """Stands in for graphs.Capturer in `graphs` mode on a machine without a card: a
    "graph" re-runs the captured function on its static inputs at each replay (what a
    device graph does with its kernels), and every capture and replay is recorded."""

    def __init__(self, mode, device):
        self.mode, self.captured, self.replays = mode, [], []
        _ReplayingCapturer.last = self

    def capture(self, fn, *inputs):
        name = fn.__name__
        self.captured.append((name, inputs[0].shape[0]))
        fn(*inputs)

        def replay():
            self.replays.append(name)
            return fn(*inputs)

        return replay


def test_device_graphs_replay_a_decoding_batchs_whole_frame_as_one_graph(tiny, monkeypatch):
    """The cuda/npu recipe at its seam: per batch bucket, one whole-frame graph per KV bucket
    (backbone step, depth loop, draws) and one frame sampler; every decode-only step of a
    captured bucket is ONE replay, a join adds one frame-sampler replay, and the codes equal
    an eager engine's."""
    import models.runner.runner as runner_mod

    monkeypatch.setattr(runner_mod, "Capturer", _ReplayingCapturer)
    eager = _engine(tiny, enforce_eager=True)
    engine = _engine(tiny)
    engine.runner.capture("graphs", [1, 2])
    capturer = _ReplayingCapturer.last
    assert sorted(capturer.captured) == sorted([("_decode_frame", b) for b in (1, 2)] + [("sample_frame", b) for b in (1, 2)])
    assert engine.runner.kv_buckets == [256]
    replays: list[tuple[int, int]] = []
    steps: list[list[str]] = []
    engine_step = engine.step

    def step():
        seen = len(capturer.replays)
        out = engine_step()
        steps.append(capturer.replays[seen:])
        return out

    engine.step = step
    got = _run(engine, replays)
    assert got == _run(eager)
    decode_only = [s for s, (d, f) in zip(steps, replays) if d == 1 and f == 1]
    assert len(decode_only) > 5 and all(s == ["_decode_frame"] for s in decode_only)  # one replay a step
    assert sum(s == ["_decode_frame", "sample_frame"] for s in steps) == len(REQUESTS) - 1  # joins beside decodes
    assert sum(s == [] for s in steps) > 5  # 3 rows: no bucket, eager
