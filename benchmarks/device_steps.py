"""Three steps of the accelerator check (benchmarks/device_check.py), each run in its own process:

    python -m benchmarks.device_steps env --device cuda --out env.json
    python -m benchmarks.device_steps accuracy --device cuda --model csm-1b-random --out accuracy.json
    python -m benchmarks.device_steps ops --device cuda --model csm-1b-random --out ops.json

`env`: what the card and the software are, and which SDPA kernel PyTorch picks for the
engine's real decode shapes (boolean mask + GQA often falls back to the math kernel on
CUDA, see FIELD-NOTES).
`accuracy`: the engine's first-frame logits (all 32 codebooks) in bf16 on the card against
transformers' float32 forward on the CPU, with the card's codes teacher-forced into the
depth decoder: cosine per codebook, which the Ascend port's accuracy evaluation wants above
0.9999. The engine runs eagerly here (sample() is recorded; captured graphs cannot be).
`ops`: what one decode step costs in launches, at batch 1 and 8: eager, the host's compute
ops (benchmarks/op_count.py's rule) and the device kernels the profiler saw; captured
(`capture: auto`: one whole-frame graph replay per decode-only step), the kernels inside the
replay and the step's time, beside the eager step's. On the CPU (the dry run) eager only.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

TEXT = "The accuracy check speaks one sentence."


def env_report(device: str, model: str) -> dict:
    import transformers

    from models.loading.builtin import builtin_config
    from models.loading.device import resolve_device

    dev = resolve_device(device)
    report = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
              "device": str(dev), "cuda_runtime": torch.version.cuda}
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        report |= {"gpu": props.name, "capability": f"{props.major}.{props.minor}",
                   "memory_gib": round(props.total_memory / 2**30, 1), "cudnn": torch.backends.cudnn.version()}
        report["sdpa_backend"] = _sdpa_choices(builtin_config(model), dev)
    return report


def _sdpa_choices(cfg, dev: torch.device) -> dict:
    """torch._fused_sdp_choice for the backbone decode and depth steps, as the engine calls SDPA."""
    names = {int(b): b.name for b in torch.nn.attention.SDPBackend}
    out = {}
    dcfg = cfg.depth_decoder_config
    for label, heads, kv_heads, head_dim, keys in (
        ("backbone_decode_b64_l512", cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, 512),
        ("depth_step_b64_l16", dcfg.num_attention_heads, dcfg.num_key_value_heads, dcfg.head_dim, 16),
    ):
        q = torch.zeros(64, heads, 1, head_dim, dtype=torch.bfloat16, device=dev)
        k = torch.zeros(64, kv_heads, keys, head_dim, dtype=torch.bfloat16, device=dev)
        for masked in (True, False):
            mask = torch.ones(64, 1, 1, keys, dtype=torch.bool, device=dev) if masked else None
            try:
                choice = torch._fused_sdp_choice(q, k, k, mask, 0.0, False, scale=None, enable_gqa=True)
                out[f"{label}{'_mask' if masked else ''}"] = names.get(int(choice), str(choice))
            except Exception as e:  # a private API: report, do not fail the check
                out[f"{label}{'_mask' if masked else ''}"] = f"unknown ({type(e).__name__})"
    return out


def accuracy_report(device: str, model: str) -> dict:
    import models.runner.frame as frame_mod
    from models import Engine, EngineConfig, GenerationParams, load_model

    card = load_model(model, device, "bfloat16")
    seen: list[torch.Tensor] = []
    real_sample = frame_mod.sample

    def recording_sample(logits, *args):
        seen.append(logits.float().cpu())
        return real_sample(logits, *args)

    frame_mod.sample = recording_sample
    try:
        engine = Engine(card, EngineConfig(model=model, max_num_seqs=1, enforce_eager=True))
        request = engine.prepare("accuracy", TEXT, GenerationParams(temperature=0, max_frames=1))
        engine.add_prepared(request)
        frames = []
        while engine.has_unfinished_requests():
            for out in engine.step():
                frames += out.frames
    finally:
        frame_mod.sample = real_sample
    codes = torch.tensor(frames[0])  # [32] the card's greedy codes
    del engine, card
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

    ref = load_model(model, "cpu", "float32").model
    ids = torch.tensor([request.prompt.token_ids])
    with torch.no_grad():
        out = ref(input_ids=ids, output_hidden_states=True)
        depth_in = torch.cat([torch.zeros(1, dtype=torch.long), codes[:-1]])[None]  # [0, c0..c30]
        depth = ref.depth_decoder(input_ids=depth_in, backbone_last_hidden_state=out.hidden_states[-1][:, -1]).logits[0]
    reference = [out.logits[0, -1], *depth]  # 32 x [V]
    cosines = [float(torch.nn.functional.cosine_similarity(a[0], b, dim=0)) for a, b in zip(seen, reference)]
    return {"model": model, "card_dtype": "bfloat16", "reference": "float32 on cpu", "codebooks": len(cosines),
            "cosine_min": round(min(cosines), 6), "cosine_mean": round(sum(cosines) / len(cosines), 6),
            "cosine_per_codebook": [round(c, 6) for c in cosines], "threshold": 0.9999,
            "passed": len(cosines) == 32 and min(cosines) > 0.9999}


def _one_step(engine, batch: int, steps: int) -> dict:
    """Profile one decode-only step of `batch` rows, then time `steps` more (each step ends
    by reading its codes back: a sync)."""
    import statistics
    import time

    from torch.profiler import ProfilerActivity, profile

    from benchmarks.op_count import count_ops
    from models import GenerationParams

    for i in range(batch):
        engine.add_request(f"ops{batch}-{i}", TEXT, GenerationParams(seed=i, max_frames=steps + 8))
    for _ in range(3):
        engine.step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    replays = engine.stats().num_captured_decodes
    with profile(activities=activities, record_shapes=True) as prof:
        engine.step()
    kernels = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t0)
    replayed = engine.stats().num_captured_decodes - replays
    while engine.has_unfinished_requests():
        engine.step()
    return {"batch": batch, "cpu_ops": sum(count_ops(prof.events()).values()), "device_kernels": kernels,
            "step_ms": round(statistics.median(times) * 1e3, 3), "whole_frame_replays": replayed}


def ops_report(device: str, model: str, batches: tuple[int, ...] = (1, 8), steps: int = 10) -> dict:
    from models import Engine, EngineConfig, load_model
    from models.runner.graphs import resolve_capture

    loaded = load_model(model, device, "bfloat16" if device != "cpu" else "float32")
    modes = ["eager"] + (["captured"] if resolve_capture("auto", loaded.device, False) else [])
    report = {"model": model, "device": str(loaded.device), "dtype": str(loaded.dtype).removeprefix("torch."),
              "rows": [], "warm_up_s": {}}
    for mode in modes:
        config = EngineConfig(model=model, max_num_seqs=max(batches), max_seq_len=512, max_frames_cap=256,
                              capture_batch_sizes=list(batches), enforce_eager=mode == "eager")
        engine = Engine(loaded, config)
        t0 = time.perf_counter()
        engine.warm_up()
        report["warm_up_s"][mode] = round(time.perf_counter() - t0, 1)
        report["rows"] += [{"mode": mode, **_one_step(engine, b, steps)} for b in batches]
        del engine
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["env", "accuracy", "ops"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default="csm-1b-random")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    steps = {"env": env_report, "accuracy": accuracy_report, "ops": ops_report}
    report = steps[args.step](args.device, args.model)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return 0 if report.get("passed", True) else 1


if __name__ == "__main__":
    raise SystemExit(main())
