"""Time to first audio of a conversation's turns, with the conversation's context kept hot on
its replica (what the router's affinity gives) and recomputed from the store on every turn
(a turn landing on a replica that does not hold it), against transformers in the same run:

    python -m benchmarks.conversation_bench [--model csm-1b-random] [--exchanges 8] [--turn-s 5]

Each exchange is a turn the user spoke (`--turn-s` seconds of recorded audio and its words,
added to the conversation) and the model's reply (`--turn-s` seconds, greedy), through one
in-process Replica (Replica.synthesize: the pipeline, the engine loop, streaming Mimi). For
each reply: its context's positions, the time to its first PCM chunk with the context hot
and cold, the positions reused and computed (hot), and transformers' time to the first frame
given the same context (its `generate`, one frame, the context embedded as
CsmForConditionalGeneration embeds codes: it has no prefix cache). Cold is a twin
conversation with the same turns, forgotten by the replica before each reply (so its
recorded turns are Mimi-encoded and every position prefilled again), its reply cut after the
first chunk; the hot reply is then given to the twin as its turn, so both histories stay the
same.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.engine_bench import WORDS, device_name
from contract.job import SpeechJob
from models import EngineConfig, GenerationParams, Segment
from models.codec.encode import encode_clip
from models.core.prompt import build_prompt
from replica.config import ReplicaConfig
from replica.replica import Replica
from stores.conversations import ConversationStore
from stores.voices import VoiceStore


def words(n: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def recording(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 24_000)) / 24_000
    return (0.2 * np.sin(2 * np.pi * 160 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


async def reply(replica: Replica, store: VoiceStore, conversation: str, text: str, turn_s: float,
                first_only: bool = False) -> float:
    """Time to the reply's first chunk; the whole reply is spoken and kept, unless `first_only`
    (then it is cut there, and not kept)."""
    job = SpeechJob(request_id=f"{conversation}-{text[:8]}", texts=(text,), voice=store.resolve("alloy"),
                    params=GenerationParams(speaker=0, temperature=0.0), max_audio_s=turn_s, conversation=conversation)
    t0, first = time.perf_counter(), None
    async with contextlib.aclosing(replica.synthesize(job)) as chunks:
        async for _ in chunks:
            first = first or time.perf_counter() - t0
            if first_only:
                break
    await replica.conversations.warmed(conversation)
    return first


def positions(replica: Replica) -> dict[str, int]:
    return {how: n for kind, how, n in replica.stats().contexts.num_positions if kind == "conversation"}


def transformers_first_frame(replica: Replica, conversations: ConversationStore, conversation: str,
                             text: str) -> float:
    """transformers' time to its first frame, given the turns as context."""
    loaded = replica._loop.engine.loaded
    model, context = loaded.model, []
    for turn in conversations.get(conversation).turns:
        if turn.audio:  # encoded as the replica encodes it (not timed: transformers would encode it too)
            codes = encode_clip(model.codec_model, conversations.load_audio(conversation, turn))
        else:
            codes = tuple(map(tuple, conversations.load_codes(conversation, turn).tolist()))
        context.append(Segment(speaker=turn.speaker, text=turn.text, codes=codes))
    t0 = time.perf_counter()
    ids = torch.tensor([build_prompt(loaded.tokenizer, loaded.special_ids, text, 0, tuple(context)).token_ids])
    with torch.no_grad():
        embeds = model.embed_text_tokens(ids)
        frames = torch.tensor([[f for s in context for f in s.codes]])
        embeds[ids == model.config.audio_token_id] = model.backbone_model.embed_tokens(frames)[0]
        eos = torch.full((1, 1, model.config.num_codebooks), model.config.codebook_eos_token_id)
        embeds[ids == model.config.audio_eos_token_id] = model.backbone_model.embed_tokens(eos)[0, 0]
        model.generate(inputs_embeds=embeds, attention_mask=torch.ones(ids.shape, dtype=torch.long), max_new_tokens=1,
                       do_sample=False, depth_decoder_do_sample=False)
    return time.perf_counter() - t0


async def run(args) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="conv-bench-"))
    voices, conversations = VoiceStore(None), ConversationStore(folder)
    engine = EngineConfig(model=args.model, device=args.device, dtype=args.dtype, max_num_seqs=2)
    replica = await asyncio.to_thread(Replica.build, engine,
                                      voices, ReplicaConfig(realtime_admission=False), conversations=conversations)
    hot, cold = conversations.create().id, conversations.create().id
    await reply(replica, voices, conversations.create().id, "Warming up.", 0.48)
    rows = []
    for i in range(args.exchanges):
        said, answer = words(round(args.turn_s * 2.5), 2 * i), words(round(args.turn_s * 2.5), 2 * i + 1)
        for conversation in (hot, cold):
            conversations.add_audio_turn(conversation, 1, said, recording(args.turn_s, i))
        await replica.forget_conversation(cold)  # as on a replica that never held it
        cold_s = await reply(replica, voices, cold, answer, args.turn_s, first_only=True)
        before = positions(replica)
        hot_s = await reply(replica, voices, hot, answer, args.turn_s)
        used = {how: positions(replica)[how] - before.get(how, 0) for how in ("reused", "computed")}
        spoken = conversations.get(hot).turns[-1]  # the twin hears the same reply
        conversations.add_generated_turn(cold, spoken.speaker, spoken.text, conversations.load_codes(hot, spoken))
        ref_s = transformers_first_frame(replica, conversations, hot, answer) if args.transformers else None
        context = used["reused"] + used["computed"]
        rows.append({"turn": i + 1, "context_positions": context, "ttfa_hot_s": round(hot_s, 4),
                     "ttfa_cold_s": round(cold_s, 4), "reused": used["reused"], "computed": used["computed"],
                     "transformers_first_frame_s": round(ref_s, 4) if ref_s is not None else None})
        print(json.dumps(rows[-1]), flush=True)
    device = device_name(replica._loop.engine.loaded)
    replica.shutdown()
    hot_p50 = statistics.median(r["ttfa_hot_s"] for r in rows)
    cold_p50 = statistics.median(r["ttfa_cold_s"] for r in rows)
    result = {"model": args.model, "device": device, "turn_s": args.turn_s, "rows": rows,
              "ttfa_hot_p50_s": round(hot_p50, 4), "ttfa_cold_p50_s": round(cold_p50, 4),
              "cold_over_hot": round(cold_p50 / hot_p50, 2)}
    if args.transformers:
        ref_p50 = statistics.median(r["transformers_first_frame_s"] for r in rows)
        result.update(transformers_first_frame_p50_s=round(ref_p50, 4), transformers_over_hot=round(ref_p50 / hot_p50, 2))
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="csm-1b-random")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", help="auto: float32 on CPU; bfloat16 where the CPU has it fast")
    ap.add_argument("--exchanges", type=int, default=8)
    ap.add_argument("--turn-s", type=float, default=5.0, help="seconds of each recorded turn and each reply")
    ap.add_argument("--no-transformers", dest="transformers", action="store_false")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    result = asyncio.run(run(args))
    print("RESULT", json.dumps({k: v for k, v in result.items() if k != "rows"}))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
