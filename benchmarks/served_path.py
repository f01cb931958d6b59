"""The served path against the engine alone, one stream at a time (c=1), in one process:

    python -m benchmarks.served_path [--model csm-tiny] [--frames 100] [--runs 3]
        [--engine-threads N] [--decode-threads N]

engine:  Engine.step() in a loop for one request (the baseline: no decode, no event loop)
served:  the same request through Replica.synthesize (engine loop thread, the batched Mimi
         decode thread, the asyncio loop), the thread plan of models/core/threads.py or
         the one given
Reports, per run, the real-time factor (wall time / audio time; below 1 is faster than
real time) and the time to the first frame (engine) or first PCM chunk (served), then the
medians and served/engine ratios. Same text, seed and frame count for both. The HTTP edge
adds encoding and transport on top: benchmarks/load.py measures that.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time

import torch

from contract.job import SpeechJob
from models import Engine, EngineConfig, GenerationParams, build_engine
from models.core.threads import ThreadPlan
from models.core.threads import apply as apply_threads
from models.params import FRAME_RATE_HZ, SAMPLE_RATE_HZ, SAMPLES_PER_FRAME
from replica.config import ReplicaConfig
from replica.replica import Replica
from stores.voices import VoiceStore

TEXT = "The weather today is sunny with a light breeze, and tomorrow brings rain."


def engine_alone(engine: Engine, frames: int, seed: int) -> dict:
    params = GenerationParams(seed=seed, max_frames=frames)
    t0 = time.perf_counter()
    engine.add_request("alone", TEXT, params)
    first, count = None, 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            count += len(out.frames)
            if first is None and out.frames:
                first = time.perf_counter() - t0
    wall = time.perf_counter() - t0
    return {"rtf": wall / (count / FRAME_RATE_HZ), "first_s": first, "frames": count}


async def served(replica: Replica, store: VoiceStore, frames: int, seed: int) -> dict:
    job = SpeechJob(request_id=f"served-{seed}", texts=(TEXT,), voice=store.resolve("alloy"),
                    params=GenerationParams(seed=seed, max_frames=frames), max_audio_s=None)
    t0 = time.perf_counter()
    first, samples = None, 0
    async for pcm in replica.synthesize(job):
        if first is None:
            first = time.perf_counter() - t0
        samples += len(pcm)
    wall = time.perf_counter() - t0
    return {"rtf": wall / (samples / SAMPLE_RATE_HZ), "first_s": first, "frames": samples // SAMPLES_PER_FRAME}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="csm-tiny")
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--engine-threads", type=int, default=None)
    ap.add_argument("--decode-threads", type=int, default=None)
    a = ap.parse_args(argv)
    config = EngineConfig(model=a.model, device="cpu", max_num_seqs=4)
    budget = torch.get_num_threads()
    plan = ThreadPlan.for_device("cpu", budget, a.engine_threads, a.decode_threads)
    apply_threads(plan.engine)  # the engine alone gets the served engine thread's team size: a like-for-like baseline
    alone = build_engine(config)
    alone.warm_up()
    engine_runs = [engine_alone(alone, a.frames, 100 + i) for i in range(a.runs + 1)][1:]  # first: warm-up
    del alone
    replica_config = ReplicaConfig(engine_threads=a.engine_threads, decode_threads=a.decode_threads)
    store = VoiceStore(tempfile.mkdtemp(prefix="served-path-"))
    replica = Replica.build(config, store, replica_config)

    async def served_runs() -> list[dict]:
        return [await served(replica, store, a.frames, 100 + i) for i in range(a.runs + 1)][1:]

    try:
        served_list = asyncio.run(served_runs())
    finally:
        replica.shutdown()
    med = {name: {k: statistics.median(r[k] for r in runs) for k in ("rtf", "first_s")}
           for name, runs in (("engine", engine_runs), ("served", served_list))}
    report = {"model": a.model, "torch_threads": budget, "plan": {"engine": replica.threads.engine,
              "decode": replica.threads.decode}, "frames": a.frames, "engine": engine_runs, "served": served_list,
              "median": med, "served_over_engine": {k: round(med["served"][k] / med["engine"][k], 2) for k in ("rtf", "first_s")}}
    print(f"{a.model}, torch threads {budget}, plan engine {replica.threads.engine} / decode {replica.threads.decode}")
    for name in ("engine", "served"):
        print(f"  {name:7s} RTF {med[name]['rtf']:.3f}  first audio {med[name]['first_s'] * 1e3:.0f} ms")
    print(f"  served/engine: RTF x{report['served_over_engine']['rtf']}, first audio x{report['served_over_engine']['first_s']}")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
