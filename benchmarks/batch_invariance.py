"""Does a seeded request give the same codes alone and batched? The engine alone, no server.

    python -m benchmarks.batch_invariance --items 32 --frames 50

Each item (its own text, seed = index) runs alone, one after another in one engine; then the
same items run --group at a time. Printed per grouping: the items whose codes differ from
alone, with the first frame that differs and how many of its 32 codes do. Nothing is timed.
"""

from __future__ import annotations

import argparse

from models import EngineConfig, GenerationParams
from models.engine import build_engine

TEXT = "Chapter {i}. The rain had stopped by the time the train pulled into the station, and the platform was empty."


def run_to_end(engine) -> dict[str, list]:
    frames: dict[str, list] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            frames.setdefault(out.request_id, []).extend(out.frames)
    return frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="csm-tiny")
    ap.add_argument("--items", type=int, default=32)
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--groups", type=int, nargs="+", default=[4, 16])
    args = ap.parse_args()
    engine = build_engine(EngineConfig(model=args.model, device="cpu", max_num_seqs=max(args.groups),
                                       max_prefill_tokens=512))
    engine.warm_up()

    def add(rid: str, i: int) -> None:
        engine.add_request(rid, TEXT.format(i=i + 1), GenerationParams(seed=i, max_frames=args.frames))

    alone = {}
    for i in range(args.items):
        add(f"a{i}", i)
        alone[i] = run_to_end(engine)[f"a{i}"]
    for group in args.groups:
        differ = []
        for start in range(0, args.items, group):
            members = range(start, min(args.items, start + group))
            for i in members:
                add(f"g{group}-{i}", i)
            got = run_to_end(engine)
            for i in members:
                codes = got[f"g{group}-{i}"]
                if codes != alone[i]:
                    k = next(k for k, (a, b) in enumerate(zip(codes, alone[i], strict=False)) if a != b)
                    differ.append({"item": i, "first_frame": k, "codes_differing": sum(
                        x != y for x, y in zip(codes[k], alone[i][k], strict=True))})
        print(f"{group} at a time: {len(differ)} of {args.items} differ from alone: {differ}", flush=True)


if __name__ == "__main__":
    main()
