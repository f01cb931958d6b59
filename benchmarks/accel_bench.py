"""Accelerator benchmark: the engine eager vs captured vs transformers `generate`, in one run.

Systems, on the same requests (random weights never emit EOS: every request runs to its
frame count on all systems):
  eager:        this engine with enforce_eager.
  captured:     this engine with its decode steps captured (CUDA/NPU graphs; torch.compile
                on CPU, where this is only a smoke run).
  transformers: `generate` with the static-cache recipe from transformers' CSM docs
                (`cache_implementation="static"` for backbone and depth decoder); generate
                then compiles the forward itself on cuda (not on cpu/npu: reported as
                `compiled`). Batches are left-padded; c requests run as one batch.
Measured per system: one request alone (real-time factor, time to first frame) and, for
each `--concurrency` level c, c requests at once (aggregate frames/s and times real time,
time to first frame p50/p95). For the engine also time to first audio: the first PCM chunk
out of the streaming Mimi decoder through a replica's pipeline, alone and at the first level.

Run: `python -m benchmarks.accel_bench --device cuda --concurrency 64 256` (writes
benchmarks/results/accel-<device>.json); benchmarks/device_check.py runs it on a GPU host.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from pathlib import Path

import torch
import transformers

from contract.job import SpeechJob
from models import Engine, EngineConfig, GenerationParams, load_model
from models.core.prompt import build_prompt
from models.params import FRAME_RATE_HZ
from replica.replica import Replica
from stores.voices import VoiceStore

from .engine_bench import device_name

TEXT = "The weather today is sunny with a light breeze, and tomorrow brings rain in the afternoon."


def _sync(device: torch.device) -> None:
    if device.type != "cpu":
        torch.get_device_module(device).synchronize()


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def _summary(c: int, frames: int, wall: float, ttff: list[float]) -> dict:
    audio_s = frames / FRAME_RATE_HZ
    return {
        "requests": c, "frames_per_request": frames, "wall_s": round(wall, 4),
        "frames_per_s": round(c * frames / wall, 2), "x_real_time": round(c * audio_s / wall, 2),
        "rtf": round(wall / audio_s, 4),
        "ttff_p50_s": round(_pct(ttff, 0.5), 4), "ttff_p95_s": round(_pct(ttff, 0.95), 4),
    }


def run_engine(engine: Engine, c: int, frames: int, seed: int) -> dict:
    t0 = time.perf_counter()
    for i in range(c):
        engine.add_request(f"b{seed}-{i}", TEXT, GenerationParams(seed=seed + i, max_frames=frames))
    first: dict[str, float] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():  # step() returns after its one host transfer: no extra sync
            if out.frames and out.request_id not in first:
                first[out.request_id] = time.perf_counter() - t0
    return _summary(c, frames, time.perf_counter() - t0, list(first.values()))


def time_to_first_audio(engine: Engine, c: int, frames: int) -> dict:
    """c requests at once through a replica's pipeline (EngineLoop + streaming Mimi): seconds
    to each request's first PCM chunk."""

    async def main() -> list[float]:
        store = VoiceStore(None)
        replica = Replica(engine, store, max_waiting=c)
        pipeline, voice = replica.pipeline, store.resolve("alloy")
        t0 = time.perf_counter()

        async def one(i: int) -> float:
            stream = pipeline.stream(SpeechJob(request_id=f"a{i}", texts=(TEXT,), voice=voice,
                                               params=GenerationParams(seed=i, max_frames=frames)))
            await anext(stream)
            seconds = time.perf_counter() - t0
            await stream.aclose()
            return seconds

        try:
            return list(await asyncio.gather(*(one(i) for i in range(c))))
        finally:
            replica.shutdown()

    ttfa = asyncio.run(main())
    return {"requests": c, "ttfa_p50_s": round(_pct(ttfa, 0.5), 4), "ttfa_p95_s": round(_pct(ttfa, 0.95), 4)}


def run_transformers(loaded, c: int, frames: int, seed: int) -> dict:
    """One left-padded batch of c requests through generate with the static cache."""
    model, device = loaded.model, loaded.device
    prompt = list(build_prompt(loaded.tokenizer, loaded.special_ids, TEXT, 0, ()).token_ids)
    ids = torch.tensor([prompt] * c, device=device)
    mask = torch.ones_like(ids)
    times: list[float] = []

    class Streamer:
        seen_prompt = False

        def put(self, value):
            if self.seen_prompt:
                times.append(time.perf_counter())
            self.seen_prompt = True

        def end(self):
            pass

    sampling = dict(do_sample=True, temperature=0.9, top_k=50)
    torch.manual_seed(seed)
    _sync(device)
    t0 = time.perf_counter()
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=frames, min_new_tokens=frames,
                   streamer=Streamer(), **sampling, **{f"depth_decoder_{k}": v for k, v in sampling.items()})
    _sync(device)
    wall = time.perf_counter() - t0
    return _summary(c, frames, wall, [times[0] - t0] * c if times else [wall] * c)


def use_static_cache(loaded) -> bool:
    """The transformers CSM docs' recipe. Returns whether generate will compile the forward."""
    model = loaded.model
    model.generation_config.cache_implementation = "static"
    model.depth_decoder.generation_config.cache_implementation = "static"
    return loaded.device.type in ("cuda", "xpu")  # transformers' own auto-compile rule


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="csm-1b-random")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[64], help="requests at once (one batch each)")
    ap.add_argument("--frames", type=int, default=125, help="frames per request (125 = 10 s of audio)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median kept)")
    ap.add_argument("--systems", nargs="+", default=["eager", "captured", "transformers"])
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/accel-<device>.json)")
    args = ap.parse_args(argv)

    loaded = load_model(args.model, args.device, args.dtype)
    levels, frames = sorted(set(args.concurrency)), args.frames
    report = {
        "model": args.model, "device": device_name(loaded), "dtype": str(loaded.dtype).removeprefix("torch."),
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "concurrency": levels, "frames_per_request": frames, "sampling": "temperature 0.9, top_k 50", "results": {},
    }
    out = Path(args.out or f"benchmarks/results/accel-{report['device']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)

    def median_run(fn, *a) -> dict:
        runs = [fn(*a, 1000 * (r + 1)) for r in range(args.repeats)]
        return sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]

    for system in args.systems:  # the report is rewritten after each system: a timeout keeps what ran
        t0 = time.perf_counter()
        row = run_system(system, loaded, args.model, levels, frames, median_run)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        report["results"][system] = row
        report["speedups"] = speedups(report["results"], levels)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"{system:>12}: {json.dumps(row)}", flush=True)
    print(f"wrote {out}")
    for system, row in report["results"].items():
        batches = ", ".join(f"c={c}: {b['frames_per_s']:.0f} frames/s ({b['x_real_time']:.1f}x real time)"
                            for c, b in row["batches"].items())
        print(f"{system:>12}: single RTF {row['single']['rtf']:.3f}, TTFF {row['single']['ttff_p50_s'] * 1e3:.0f} ms; "
              f"{batches}" + (f"; TTFA {row['ttfa_single']['ttfa_p50_s'] * 1e3:.0f} ms alone" if "ttfa_single" in row
                              else ""))
    print("speedups: " + ", ".join(f"{k} {v:.2f}x" for k, v in report["speedups"].items()))
    return report


def run_system(system: str, loaded, model: str, levels: list[int], frames: int, median_run) -> dict:
    """One system's row: one request alone, then each concurrency level as one batch."""
    if system == "transformers":
        compiled = use_static_cache(loaded)
        row = {"compiled": compiled}
        run_transformers(loaded, 1, frames, 0)  # compile and size the caches outside the timed runs
        row["single"] = median_run(run_transformers, loaded, 1, frames)
        row["batches"] = {}
        for c in levels:
            run_transformers(loaded, c, frames, 0)
            row["batches"][str(c)] = median_run(run_transformers, loaded, c, frames)
        return row
    t0 = time.perf_counter()
    config = EngineConfig(model=model, max_num_seqs=max(levels), max_seq_len=1024, max_frames_cap=frames,
                          enforce_eager=system == "eager", capture_batch_sizes=sorted({1, *levels}),
                          capture="auto" if loaded.device.type != "cpu" else "compile")
    engine = Engine(loaded, config)
    engine.warm_up()  # captures here
    row = {"capture": engine.stats().capture_mode or "eager", "warm_up_s": round(time.perf_counter() - t0, 2)}
    for c in levels:
        run_engine(engine, c, min(frames, 8), 0)  # first use of this batch size outside the timed runs
    row["single"] = median_run(run_engine, engine, 1, frames)
    row["ttfa_single"] = time_to_first_audio(engine, 1, frames)
    row["batches"] = {str(c): median_run(run_engine, engine, c, frames) for c in levels}
    row["ttfa_batch"] = time_to_first_audio(engine, levels[0], frames)
    return row


def speedups(res: dict, levels: list[int]) -> dict:
    ratios = {}
    for a, b in (("captured", "eager"), ("captured", "transformers"), ("eager", "transformers")):
        if a in res and b in res:
            ratios[f"{a}_over_{b}_single"] = round(res[b]["single"]["wall_s"] / res[a]["single"]["wall_s"], 2)
            for c in levels:
                ratios[f"{a}_over_{b}_c{c}"] = round(
                    res[a]["batches"][str(c)]["frames_per_s"] / res[b]["batches"][str(c)]["frames_per_s"], 2)
    return ratios


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
