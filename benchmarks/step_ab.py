"""Engine step timing for A/B-testing a refactor: the same workloads on whichever `models`
package Python imports, so old and new code run the same script.

    python -m benchmarks.step_ab --label new                      # this tree only
    python -m benchmarks.step_ab --ref <rev> --model csm-tiny     # <rev> vs this tree, one run

Workloads (csm-1b-random by default, bf16 where the CPU has it):
  steady: 16 requests decoding together; median of 25 timed steps after 20 untimed ones.
  mixed:  16 requests joining every 2 steps (prefill and decode in the same steps), 30 frames
          each; frames/s over the whole run.
  sizes:  the decode step per batch size (`--sizes`): median of `--steps` decode-only steps
          of that many rows, after their prefill and two untimed steps.
With `--ref`, the tree at that git revision (exported to a temporary folder) and this tree
take turns, `--rounds` times each, each run in its own process; per batch size the median
over rounds of each side, the ratio new/old, and the real-time capacity of each: the most
rows whose step stays within 80 ms / (1 + margin) (66.7 ms at the default margin 0.2, as
replica/realtime.py's admission keeps it; interpolating between the measured sizes). Only the engine API that
every version so far has (Engine, EngineConfig, GenerationParams, load_model,
add_request(id, text, params), abort_request, step, has_unfinished_requests, stats) is used.
This is not a product benchmark (that is engine_bench, against transformers): compare
only runs of the same session, on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FRAME_RATE_HZ = 12.5  # models.params.FRAME_RATE_HZ (not imported: this file must run on old trees)
TEXT = "The weather today is sunny with a light breeze, and tomorrow brings rain. " * 2


def steady(loaded, model: str) -> float:
    from models import Engine, EngineConfig, GenerationParams

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
    from models import Engine, EngineConfig, GenerationParams

    engine = Engine(loaded, EngineConfig(model=model, max_num_seqs=16, max_prefill_tokens=256))
    t0, step, added, frames = time.perf_counter(), 0, 0, 0
    while added < 16 or engine.has_unfinished_requests():
        if added < 16 and step % 2 == 0:
            engine.add_request(f"m{added}", TEXT, GenerationParams(seed=added, max_frames=30))
            added += 1
        frames += sum(len(out.frames) for out in engine.step())
        step += 1
    return round(frames / (time.perf_counter() - t0), 2)


def sizes(loaded, model: str, batch_sizes: list[int], steps: int) -> dict[str, float]:
    """{rows: median decode-step ms} for each batch size, on one engine of max(sizes) slots."""
    from models import Engine, EngineConfig, GenerationParams

    engine = Engine(loaded, EngineConfig(model=model, max_num_seqs=max(batch_sizes), max_prefill_tokens=2048))
    out = {}
    for rows in batch_sizes:
        ids = [f"s{rows}-{i}" for i in range(rows)]
        for i, rid in enumerate(ids):
            engine.add_request(rid, "Hello there, how are you?", GenerationParams(seed=i, max_frames=steps + 8))
        for _ in range(3):  # the prefill, then untimed decode steps
            engine.step()
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            engine.step()
            times.append(time.perf_counter() - t0)
        assert engine.stats().last_batch_size == rows, "timed steps must be decode steps of all rows"
        for rid in ids:
            engine.abort_request(rid)
        while engine.has_unfinished_requests():
            engine.step()
        out[str(rows)] = round(statistics.median(times) * 1e3, 2)
    return out


def measure(args) -> dict:
    from models import load_model

    loaded = load_model(args.model, "cpu", "auto")
    report = {"label": args.label, "model": args.model}
    if "steady" in args.workloads:
        report["steady_step_ms_median"] = steady(loaded, args.model)
    if "mixed" in args.workloads:
        report["mixed_frames_per_s"] = mixed(loaded, args.model)
    if "sizes" in args.workloads:
        report["step_ms"] = sizes(loaded, args.model, sorted(args.sizes), args.steps)
    return report


def capacity(step_ms: dict[str, float], margin: float) -> int:
    """The most rows (up to the largest size measured) whose step, interpolated linearly
    between the measured sizes, stays within one frame (80 ms) / (1 + margin); 0 if none."""
    measured = sorted((int(rows), ms) for rows, ms in step_ms.items())
    budget_ms = 1e3 / FRAME_RATE_HZ / (1 + margin)
    best = 0
    for (r0, t0), (r1, t1) in zip(measured, measured[1:] + measured[-1:]):
        for rows in range(r0, max(r0, r1 - 1) + 1):
            ms = t0 if r1 == r0 else t0 + (t1 - t0) * (rows - r0) / (r1 - r0)
            if ms <= budget_ms:
                best = max(best, rows)
    return best


def _run_side(tree: Path, label: str, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--label", label, "--model", args.model, "--workloads",
           *args.workloads, "--sizes", *map(str, args.sizes), "--steps", str(args.steps)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run(cmd, env=env, cwd=tree, check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def paired(args) -> dict:
    """The old tree (git revision args.ref) and this one, alternating, args.rounds times."""
    with tempfile.TemporaryDirectory(prefix="step-ab-") as tmp:
        old = Path(tmp)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.ref], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
        runs = {"old": [], "new": []}
        for _ in range(args.rounds):
            runs["old"].append(_run_side(old, f"old ({args.ref})", args))
            runs["new"].append(_run_side(ROOT, "new", args))
    report = {"model": args.model, "ref": args.ref, "rounds": args.rounds, "runs": runs}
    for key in ("steady_step_ms_median", "mixed_frames_per_s"):
        if key in runs["new"][0]:
            report[key] = {side: statistics.median(r[key] for r in rs) for side, rs in runs.items()}
    if "step_ms" in runs["new"][0]:
        report["step_ms"] = {side: {rows: statistics.median(r["step_ms"][rows] for r in rs) for rows in rs[0]["step_ms"]}
                             for side, rs in runs.items()}
        report["new_over_old"] = {rows: round(report["step_ms"]["new"][rows] / ms, 3)
                                  for rows, ms in report["step_ms"]["old"].items()}
        report["realtime_capacity"] = {side: capacity(ms, args.margin) for side, ms in report["step_ms"].items()}
    return report


def table(report: dict) -> str:
    lines = [f"{report['model']}: old = {report['ref']}, new = this tree; median of {report['rounds']} runs each"]
    if "step_ms" in report:
        lines.append(f"{'rows':>5} {'old ms':>9} {'new ms':>9} {'new/old':>8}")
        for rows, old in report["step_ms"]["old"].items():
            lines.append(f"{rows:>5} {old:>9.2f} {report['step_ms']['new'][rows]:>9.2f} {report['new_over_old'][rows]:>8.3f}")
        cap = report["realtime_capacity"]
        lines.append(f"real-time capacity (streams within the frame budget): old {cap['old']}, new {cap['new']}")
    for key in ("steady_step_ms_median", "mixed_frames_per_s"):
        if key in report:
            old, new = report[key]["old"], report[key]["new"]
            lines.append(f"{key}: old {old}, new {new} (new/old {new / old:.3f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", default="new")
    ap.add_argument("--model", default="csm-1b-random")
    ap.add_argument("--workloads", nargs="+", default=["steady", "mixed"], choices=["steady", "mixed", "sizes"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 12, 16])
    ap.add_argument("--steps", type=int, default=10, help="decode steps timed per batch size (sizes)")
    ap.add_argument("--ref", default=None, help="git revision to compare with, in the same run")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each side with --ref")
    ap.add_argument("--margin", type=float, default=0.2, help="real-time margin: budget 80 ms / (1 + margin)")
    ap.add_argument("--out", default=None, help="also write the report as JSON here")
    args = ap.parse_args(argv)
    report = paired(args) if args.ref else measure(args)
    print(table(report) if args.ref else json.dumps(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
