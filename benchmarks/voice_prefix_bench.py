"""Time to first frame with a voice prompt, with and without the engine's prefix cache.

A voice is a reference clip (here `--voice-s` seconds of seeded random Mimi codes) plus its
transcript. Without the cache every request prefills that context; with it (Engine.compute_prefix,
done once per replica) a request prefills only its own text. Requests run one at a time.

Run: `python -m benchmarks.voice_prefix_bench --help`.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from benchmarks.engine_bench import WORDS, device_name
from models import Engine, EngineConfig, GenerationParams, Prefix, Segment, load_model
from models.params import CODEBOOK_SIZE, FRAME_RATE_HZ, NUM_CODEBOOKS


def make_voice(seconds: float, seed: int = 0) -> tuple[Segment, ...]:
    rng = random.Random(seed)
    frames = round(seconds * FRAME_RATE_HZ)
    codes = tuple(tuple(rng.randrange(CODEBOOK_SIZE) for _ in range(NUM_CODEBOOKS)) for _ in range(frames))
    transcript = " ".join(rng.choice(WORDS) for _ in range(round(seconds * 2.5))).capitalize() + "."
    return (Segment(speaker=0, text=transcript, codes=codes),)


def time_to_first_frame(engine: Engine, text: str, params: GenerationParams, voice: tuple[Segment, ...],
                        prefix: Prefix | None = None) -> float:
    t0 = time.perf_counter()
    engine.add_request("r", text, params, voice, prefix)
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.frames:
                first = time.perf_counter() - t0
    return first


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="csm-1b-random")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--voice-s", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    loaded = load_model(args.model, args.device, args.dtype)
    engine = Engine(loaded, EngineConfig(model=args.model, max_num_seqs=1))
    voice = make_voice(args.voice_s)
    text = "Thanks for calling, how can I help you today?"
    params = GenerationParams(seed=1, max_frames=1)
    time_to_first_frame(engine, text, params, voice)  # warm-up
    cold = [time_to_first_frame(engine, text, params, voice) for _ in range(args.repeats)]
    t0 = time.perf_counter()
    prefix = engine.compute_prefix(voice)
    prefix_len = prefix.length
    prefix_s = time.perf_counter() - t0
    warm = [time_to_first_frame(engine, text, params, voice, prefix) for _ in range(args.repeats)]
    report = {
        "model": args.model, "device": device_name(loaded), "dtype": str(loaded.dtype).removeprefix("torch."),
        "voice_s": args.voice_s, "prefix_positions": prefix_len, "prefix_compute_s": round(prefix_s, 3),
        "ttff_without_prefix_s": round(statistics.median(cold), 3),
        "ttff_with_prefix_s": round(statistics.median(warm), 3),
    }
    report["ttff_speedup"] = round(report["ttff_without_prefix_s"] / report["ttff_with_prefix_s"], 2)
    out = Path(args.out or f"benchmarks/results/voice-prefix-{report['device']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    print(f"voice prefix cache: time to first frame {report['ttff_without_prefix_s']} s -> "
          f"{report['ttff_with_prefix_s']} s ({report['ttff_speedup']}x)")
    return report


if __name__ == "__main__":
    main()
