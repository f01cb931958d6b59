"""Engine benchmark: this engine vs transformers `generate`, on one workload, in one run.

Workload: requests of mixed lengths (2 to 10 s of audio, i.e. 25 to 125 frames) from `c`
closed-loop clients (each sends its next request U(0, --think-s) after the previous one is
answered), started `--stagger-s` apart so requests arrive over time; min(2c, 32) requests at
each concurrency `c`.
Systems on the same requests:
  (a) sequential: transformers `generate`, one request at a time (= static batching at c=1);
      at c > 1 its aggregate frames/s is the c=1 figure (one at a time does not scale).
  (b) static: transformers `generate` on left-padded batches of up to c waiting requests
      (a batch waits up to --max-wait-s to fill); a batch runs until its longest member ends.
  (c) engine: this engine, requests join and leave at frame boundaries.
Random weights never emit EOS, so each request's frame count is its max_frames (both sides).

Run: `make bench` or `python -m benchmarks.engine_bench --help`.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers

from models import Engine, EngineConfig, GenerationParams, load_model
from models.core.prompt import build_prompt
from models.params import FRAME_RATE_HZ

WORDS = "the a voice assistant reads weather news music calendar message today tomorrow please".split()


@dataclass
class Job:
    rid: str
    text: str
    num_frames: int
    seed: int
    arrival: float = 0.0
    first_frame: float | None = None
    finish: float | None = None
    frame_times: list[float] = field(default_factory=list)
    client: int = 0


@dataclass
class Clients:
    """Closed-loop clients: client i sends jobs[i::c], the first at start + i * stagger."""

    jobs: list[Job]
    c: int
    stagger_s: float
    think_s: float = 0.0
    queues: list[list[Job]] = field(default_factory=list)
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    ready_at: list[float] = field(default_factory=list)

    def start(self, t0: float) -> None:
        self.queues = [self.jobs[i :: self.c] for i in range(self.c)]
        self.ready_at = [t0 + i * self.stagger_s for i in range(self.c)]

    def due(self, now: float) -> list[tuple[int, Job]]:
        out = []
        for i, q in enumerate(self.queues):
            if q and self.ready_at[i] <= now:
                job = q.pop(0)
                job.arrival, job.client = self.ready_at[i], i
                self.ready_at[i] = float("inf")
                out.append((i, job))
        return out

    def answered(self, client: int, t: float) -> None:
        self.ready_at[client] = t + self.rng.uniform(0, self.think_s)

    def next_arrival(self) -> float:
        return min((t for q, t in zip(self.queues, self.ready_at) if q), default=float("inf"))


def make_jobs(n: int, seed: int, tokens_per_word: float = 1.3) -> list[Job]:
    """Requests of 25-125 frames with text of ~2.5 words/s. The built-in models' tokenizer is
    byte-level, so the text is made of short words sized to give the prompt length the real
    Llama-3 tokenizer gives for that speech (`tokens_per_word`); both systems get the same."""
    rng = random.Random(seed)
    jobs = []
    for i in range(n):
        frames = rng.randint(25, 125)
        words = max(3, round(frames / FRAME_RATE_HZ * 2.5))
        n_bytes = round(words * tokens_per_word)
        text = "".join(rng.choice("abcdefghijklmnoprstuvwy") + (" " if k % 3 == 2 else "") for k in range(n_bytes))
        jobs.append(Job(f"r{i}", text.strip().capitalize() + ".", frames, i))
    return jobs


def _sleep_until(t: float) -> None:
    time.sleep(max(0.0, min(t - time.perf_counter(), 1.0)))


def run_engine(engine: Engine, clients: Clients) -> None:
    owner: dict[str, tuple[int, Job]] = {}
    clients.start(time.perf_counter())
    while True:
        for i, job in clients.due(time.perf_counter()):
            owner[job.rid] = (i, job)
            engine.add_request(job.rid, job.text, GenerationParams(seed=job.seed, max_frames=job.num_frames))
        if not engine.has_unfinished_requests():
            if clients.next_arrival() == float("inf"):
                return
            _sleep_until(clients.next_arrival())
            continue
        outputs = engine.step()
        now = time.perf_counter()
        for out in outputs:
            i, job = owner[out.request_id]
            job.frame_times += [now] * len(out.frames)
            if out.frames and job.first_frame is None:
                job.first_frame = now
            if out.is_finished:
                job.finish = now
                clients.answered(i, now)


class _FrameTimes:
    """A generate() streamer: the first put is the prompt, each later put one frame."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._seen_prompt = False

    def put(self, value) -> None:
        if self._seen_prompt:
            self.times.append(time.perf_counter())
        self._seen_prompt = True

    def end(self) -> None:
        pass


def _generate_batch(loaded, jobs: list[Job]) -> list[float]:
    prompts = [list(build_prompt(loaded.tokenizer, loaded.special_ids, j.text, 0, ()).token_ids) for j in jobs]
    width = max(map(len, prompts))
    pad = loaded.model.config.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=loaded.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=loaded.device)
    streamer = _FrameTimes()
    torch.manual_seed(jobs[0].seed)
    sampling = dict(do_sample=True, temperature=0.9, top_k=50)
    loaded.model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=max(j.num_frames for j in jobs), streamer=streamer,
        **sampling, **{f"depth_decoder_{k}": v for k, v in sampling.items()},
    )
    return streamer.times


def run_static(loaded, clients: Clients, max_wait_s: float) -> None:
    queue: list[tuple[int, Job]] = []
    clients.start(time.perf_counter())
    while True:
        queue += clients.due(time.perf_counter())
        if not queue:
            if clients.next_arrival() == float("inf"):
                return
            _sleep_until(clients.next_arrival())
            continue
        if len(queue) < clients.c and time.perf_counter() < queue[0][1].arrival + max_wait_s:
            _sleep_until(min(queue[0][1].arrival + max_wait_s, clients.next_arrival()))
            continue
        batch, queue = queue[: clients.c], queue[clients.c :]
        times = _generate_batch(loaded, [j for _, j in batch])
        end = time.perf_counter()
        for i, job in batch:
            job.frame_times = times[: job.num_frames]
            job.first_frame, job.finish = times[0], times[job.num_frames - 1]
            clients.answered(i, end)


def summarize(jobs: list[Job]) -> dict:
    frames = sum(j.num_frames for j in jobs)
    wall = max(j.finish for j in jobs) - min(j.arrival for j in jobs)
    ttff = sorted(j.first_frame - j.arrival for j in jobs)
    rtf = sorted((j.finish - j.arrival) / (j.num_frames / FRAME_RATE_HZ) for j in jobs)

    def pct(xs, q):
        return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]

    # Saturated window: from the first arrival until the first client has sent its last
    # request and got it back; past that fewer than c clients remain (the drain tail).
    start = min(j.arrival for j in jobs)
    end = min(max(j.finish for j in jobs if j.client == c) for c in {j.client for j in jobs})
    in_window = sum(t <= end for j in jobs for t in j.frame_times)
    return {
        "requests": len(jobs),
        "saturated_window_s": round(end - start, 3),
        "saturated_frames_per_s": round(in_window / (end - start), 3),
        "frames": frames,
        "wall_s": round(wall, 3),
        "frames_per_s": round(frames / wall, 3),
        "rtf_aggregate": round(wall / (frames / FRAME_RATE_HZ), 4),
        "rtf_p50": round(pct(rtf, 0.5), 4),
        "rtf_p95": round(pct(rtf, 0.95), 4),
        "ttff_p50_s": round(pct(ttff, 0.5), 3),
        "ttff_p95_s": round(pct(ttff, 0.95), 3),
        "ttff_mean_s": round(statistics.fmean(ttff), 3),
    }


def device_name(loaded) -> str:
    if loaded.device.type == "cuda":
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-")
    if loaded.device.type == "npu":
        return "ascend-npu"
    return f"cpu-{torch.get_num_threads()}threads"


def warm_up(loaded, engine: Engine, max_c: int) -> None:
    warm = make_jobs(max_c, seed=999)
    for job in warm:
        job.num_frames = 3
    run_engine(engine, Clients(warm, max_c, 0.0))
    _generate_batch(loaded, warm[:1])
    _generate_batch(loaded, warm[: min(max_c, 4)])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="csm-1b-random")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32])
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--max-requests", type=int, default=32, help="cap per concurrency (c=32 sends 1 each)")
    ap.add_argument("--stagger-s", type=float, default=0.1, help="gap between the clients' first requests")
    ap.add_argument("--think-s", type=float, default=2.0, help="a client pauses U(0, think-s) between requests")
    ap.add_argument("--max-wait-s", type=float, default=2.0, help="static batching: wait to fill a batch")
    ap.add_argument("--max-prefill-tokens", type=int, default=256)
    ap.add_argument("--frames-scale", type=float, default=1.0, help="shrink request lengths (smoke tests)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/engine-<device>.json)")
    args = ap.parse_args(argv)

    loaded = load_model(args.model, args.device, args.dtype)
    max_c = max(args.concurrency)
    engine = Engine(loaded, EngineConfig(model=args.model, max_num_seqs=max_c, max_prefill_tokens=args.max_prefill_tokens))
    warm_up(loaded, engine, max_c)
    report = {
        "model": args.model, "device": device_name(loaded), "dtype": str(loaded.dtype).removeprefix("torch."),
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "workload": {"frames_per_request": "25-125 (2-10 s)", "stagger_s": args.stagger_s,
                     "requests_per_client": args.requests_per_client, "think_s": args.think_s,
                     "prompt_tokens": "Llama-3-sized (1.3 tokens/word)",
                     "max_requests": args.max_requests, "max_wait_s": args.max_wait_s,
                     "sampling": "temperature 0.9, top_k 50"},
        "results": {},
    }
    sequential = None
    for c in sorted(args.concurrency):
        row = {}
        n = min(c * args.requests_per_client, max(args.max_requests, c))
        for system in ("static", "engine"):
            jobs = make_jobs(n, seed=c)
            for j in jobs:
                j.num_frames = max(2, round(j.num_frames * args.frames_scale))
            t0 = time.perf_counter()
            if system == "engine":
                run_engine(engine, Clients(jobs, c, args.stagger_s, args.think_s))
            else:
                run_static(loaded, Clients(jobs, c, args.stagger_s, args.think_s), args.max_wait_s)
            row[system] = summarize(jobs)
            print(f"c={c:>2} {system:>6}: {row[system]} ({time.perf_counter() - t0:.0f} s)", flush=True)
        if c == 1:
            sequential = dict(row["static"])
        if sequential is not None:
            row["sequential"] = {"frames_per_s": sequential["frames_per_s"], "measured_at_concurrency": 1}
            row["speedup_vs_sequential"] = round(row["engine"]["frames_per_s"] / sequential["frames_per_s"], 3)
        row["speedup_vs_static"] = round(row["engine"]["frames_per_s"] / row["static"]["frames_per_s"], 3)
        row["saturated_speedup_vs_static"] = round(
            row["engine"]["saturated_frames_per_s"] / row["static"]["saturated_frames_per_s"], 3
        )
        if sequential is not None:
            row["saturated_speedup_vs_sequential"] = round(
                row["engine"]["saturated_frames_per_s"] / sequential["frames_per_s"], 3
            )
        row["ttff_p50_static_over_engine"] = round(row["static"]["ttff_p50_s"] / row["engine"]["ttff_p50_s"], 2)
        report["results"][str(c)] = row
    out = Path(args.out or f"benchmarks/results/engine-{report['device']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    ref = report["results"].get("16") or report["results"][str(max_c)]
    at = "16" if "16" in report["results"] else str(max_c)
    print(f"saturated window (all clients active) @{at}: engine {ref['engine']['saturated_frames_per_s']} frames/s, "
          f"{ref.get('saturated_speedup_vs_sequential', float('nan')):.2f}x sequential, "
          f"{ref['saturated_speedup_vs_static']:.2f}x static; time to first frame p50 "
          f"{ref['ttff_p50_static_over_engine']:.2f}x lower than static")
    print(f"engine speedup vs sequential @{at}: {ref.get('speedup_vs_sequential', float('nan')):.2f}, "
          f"vs static batching @{at}: {ref['speedup_vs_static']:.2f}")
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
