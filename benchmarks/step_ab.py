"""Engine step timing for A/B-testing a refactor: the same two workloads on whichever `models`
package Python imports, so old and new code run the same script.

    python benchmarks/step_ab.py --label new
    git worktree add /tmp/old <rev> && PYTHONPATH=/tmp/old python benchmarks/step_ab.py --label old

Workloads (csm-1b-random, bf16 where the CPU has it):
  steady: 16 requests decoding together; median of 25 timed steps after 20 untimed ones.
  mixed:  16 requests joining every 2 steps (prefill and decode in the same steps), 30 frames
          each; frames/s over the whole run.
Only the engine API that every version so far has (Engine, EngineConfig, GenerationParams,
load_model, add_request(id, text, params), step, has_unfinished_requests, stats) is used.
This is not a product benchmark (that is engine_bench, against transformers): alternate
old and new runs on an idle machine, and compare only runs of the same session.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from models import Engine, EngineConfig, GenerationParams, load_model

TEXT = "The weather today is sunny with a light breeze, and tomorrow brings rain. " * 2


def steady(loaded, model: str) -> float:
    engine = Engine(loaded, EngineConfig(model=model, max_num_seqs=16, max_prefill_tokens=512))
    for i in range(16):
        engine.add_request(f"r{i}", TEXT, GenerationParams(seed=i, max_frames=200))
    for _ in range(20):
        engine.step()
    times = []
    for _ in range(25):
        t0 = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1e3, 1)


def mixed(loaded, model: str) -> float:
    engine = Engine(loaded, EngineConfig(model=model, max_num_seqs=16, max_prefill_tokens=256))
    t0, step, added, frames = time.perf_counter(), 0, 0, 0
    while added < 16 or engine.has_unfinished_requests():
        if added < 16 and step % 2 == 0:
            engine.add_request(f"m{added}", TEXT, GenerationParams(seed=added, max_frames=30))
            added += 1
        frames += sum(len(out.frames) for out in engine.step())
        step += 1
    return round(frames / (time.perf_counter() - t0), 2)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", required=True)
    ap.add_argument("--model", default="csm-1b-random")
    args = ap.parse_args(argv)
    loaded = load_model(args.model, "cpu", "auto")
    report = {"label": args.label, "steady_step_ms_median": steady(loaded, args.model),
              "mixed_frames_per_s": mixed(loaded, args.model)}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
