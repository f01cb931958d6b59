"""`csm-serve`: start the server with overrides, or synthesize offline to a file.

    csm-serve serve [--config serve_config.yaml] [--model PATH] [--device npu] [--port 8000]
    csm-serve local [--model csm-tiny] [--port 8000]          # one process, no Ray
    csm-serve say "Hello there." -o hello.mp3 [--voice alloy] [--seed 7]
    csm-serve wyoming [--uri tcp://0.0.0.0:10200] [--api-url http://127.0.0.1:8000]  # Home Assistant
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

import yaml

from clients.wyoming import server as wyoming_server
from serve.audio import FORMATS, SAMPLE_RATES, make_encoder


def _serve(args: argparse.Namespace) -> None:
    """`serve run` on the config with the given overrides (written to a temporary copy)."""
    config = yaml.safe_load(Path(args.config).read_text())
    app = config["applications"][0]
    engine = app.setdefault("args", {}).setdefault("engine", {})
    for key in ("model", "device", "dtype", "max_num_seqs"):
        if getattr(args, key) is not None:
            engine[key] = getattr(args, key)
    config.setdefault("http_options", {}).update({"host": args.host, "port": args.port})
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(config, f)
    serve_bin = str(Path(sys.executable).with_name("serve"))
    os.execv(serve_bin, [serve_bin, "run", f.name])


async def _say(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from contract.job import SpeechJob
    from contract.text_feed import PieceDone
    from models import EngineConfig, GenerationParams
    from models.params import FRAME_S, SAMPLES_PER_FRAME
    from replica.replica import Replica
    from serve.text import split_text
    from stores.voices import VoiceStore

    fmt = args.format or Path(args.output).suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise SystemExit(f"format: use one of {', '.join(FORMATS)} (or an output file ending in one)")
    try:
        encoder = make_encoder(fmt, args.speed, args.sample_rate)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    store = VoiceStore(args.voices_dir)
    voice = store.resolve(args.voice)
    texts = split_text(args.text)
    job = SpeechJob(request_id="say", texts=tuple(texts), voice=voice, marks=True,
                    params=GenerationParams(speaker=voice.speaker, seed=args.seed, max_frames=args.max_frames))
    replica = Replica.build(EngineConfig(model=args.model, device=args.device, max_num_seqs=1), store)
    try:
        with open(args.output, "wb") as out, tqdm(total=len(texts), unit="segment", desc="speaking") as bar:
            frames = 0
            async for item in replica.synthesize(job):
                if isinstance(item, PieceDone):
                    bar.update(1)
                    continue
                out.write(encoder.encode(item))
                frames += len(item) // SAMPLES_PER_FRAME
                bar.set_postfix(audio_s=f"{frames * FRAME_S:.1f}")
            out.write(encoder.flush())
    finally:
        replica.shutdown()
    print(f"wrote {args.output}: {frames * FRAME_S:.2f} s of audio")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="csm-serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    srv = sub.add_parser("serve", help="run the Ray Serve app from a config file, with overrides")
    srv.add_argument("--config", default="serve_config.yaml")
    for p in (srv, sub.add_parser("local", help="the same API in one process, without Ray")):
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=8000)
        p.add_argument("--model", default=None)
        p.add_argument("--device", default=None)
        p.add_argument("--max-num-seqs", type=int, default=None)
    srv.add_argument("--dtype", default=None)
    say = sub.add_parser("say", help="synthesize text to an audio file, offline")
    say.add_argument("text")
    say.add_argument("-o", "--output", required=True)
    say.add_argument("--format", choices=FORMATS, default=None, help="default: from the output's suffix")
    say.add_argument("--voice", default="alloy")
    say.add_argument("--voices-dir", default=None)
    say.add_argument("--model", default="csm-tiny")
    say.add_argument("--device", default="auto")
    say.add_argument("--seed", type=int, default=None)
    say.add_argument("--speed", type=float, default=1.0)
    say.add_argument("--sample-rate", type=int, choices=SAMPLE_RATES, default=None, help="default: the format's own")
    say.add_argument("--max-frames", type=int, default=None, help="cap per text segment (80 ms each)")
    wyo = sub.add_parser("wyoming", help="a Wyoming TTS server (Home Assistant) in front of a running csm-serve")
    wyoming_server.add_arguments(wyo)
    args = ap.parse_args(argv)
    if args.command == "wyoming":
        wyoming_server.configure_logging()
        asyncio.run(wyoming_server.run(wyoming_server.settings_from(args)))
        return 0
    if args.command == "serve":
        _serve(args)
    if args.command == "local":
        from .local import main as local_main

        forwarded = ["--host", args.host, "--port", str(args.port)]
        forwarded += ["--model", args.model] if args.model else []
        forwarded += ["--device", args.device] if args.device else []
        forwarded += ["--max-num-seqs", str(args.max_num_seqs)] if args.max_num_seqs else []
        local_main(forwarded)
        return 0
    return asyncio.run(_say(args))


if __name__ == "__main__":
    sys.exit(main())
