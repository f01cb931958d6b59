"""The accelerator check: one prepared command that proves and measures csm-serve on a GPU.

    make device-wheels                     # here, with network: the wheels the GPU host lacks
    make device-check OUT=/some/dir        # on the GPU host (no network), at most ~8 minutes
    make device-check-dry                  # the same steps on this CPU with csm-tiny (CI runs it)

Steps, each in its own process with a time limit (logs and intermediate files in --work):
  setup     import what the check needs; if something is missing or too old, install the
            wheels in ./.device-wheels (benchmarks/device-requirements.txt) into WORK/site,
            on PYTHONPATH before the host's own packages (its CUDA torch stays)
  env       torch / CUDA / card, and the SDPA kernel chosen for the real decode shapes
  tests     pytest -m accel tests/models/test_accel.py (greedy codes equal transformers' on
            the card; captured steps equal eager steps); on a card every one of them must
            run and pass (a skipped test fails the step); in a dry run they are all skipped
            (no accelerator), which the step says
  accuracy  first-frame logits, bf16 on the card vs float32 on the CPU, cosine > 0.9999
  ops       what a decode step costs in launches at batch 1 and 8: eager (host compute ops,
            device kernels) and captured (kernels inside the one whole-frame replay, and its
            time beside the eager step's)
  bench     benchmarks.accel_bench: engine captured vs eager vs transformers' static-cache
            recipe; one 10 s request alone (RTF, time to first frame / audio) and 64 and 256
            at once (aggregate frames/s); partial results survive a timeout
  listen    benchmarks.listen_check: what a real-time listener hears from the served API. The
            one-process server (deployments.local, no Ray) with the bench's model on the card,
            on a free loopback port; once ready, benchmarks/load.py's closed loop with pcm
            listeners (each stream played back in real time from its first byte) at
            --listen-concurrency 1 4 16, 2c requests of 4 s each; per level TTFA p50/p95, RTF,
            gaps heard, streams with gaps, streams held in real time, least buffered audio
            (min slack) and 429s; then a burst of --listen-burst at once (refusal latency p50 /
            max, streams served at once), the replica's real-time capacity after each level, and
            the engine alone's capacity on the card beside it (served at once / engine alone). The bench leaves it --listen-s (120; 60 in a dry run: csm-tiny
            on the CPU, c=1 and 2, 1 s streams); levels that ended survive a timeout
Writes three files to OUT (few, so they all come back from a lent machine): device-check.json
(every step's status, env, accuracy, benchmark, listeners), accel-<device>.json (the
benchmark and the listeners, to commit under benchmarks/results/) and device-check.log (all
step logs); prints a short table last. This file imports only the standard library: it runs
before anything is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHEELS = ROOT / ".device-wheels"
REQUIREMENTS = ROOT / "benchmarks" / "device-requirements.txt"
CHECK_IMPORTS = ("import torch, transformers, pydantic, numpy, pytest, tokenizers, safetensors; "
                 "assert transformers.__version__ == '5.23.0', transformers.__version__; "
                 "from transformers import CsmForConditionalGeneration")


class Check:
    def __init__(self, out: Path, work: Path, budget_s: float) -> None:
        self.out, self.work, self.logs = out, work, work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        self.deadline = time.monotonic() + budget_s
        self.python = sys.executable
        self.pythonpath = [str(ROOT)]
        self.steps: dict[str, dict] = {}

    def left_s(self, reserve_s: float = 15) -> float:
        return max(0.0, self.deadline - time.monotonic() - reserve_s)

    def run(self, name: str, args: list[str], limit_s: float) -> bool:
        """Run one step as `python <args>` from the repo root; record status, time, log."""
        limit_s = min(limit_s, self.left_s())
        t0, log = time.monotonic(), self.logs / f"{name}.log"
        if limit_s < 5:
            self.steps[name] = {"status": "skipped (no time left)", "seconds": 0}
            return False
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(self.pythonpath), "PYTHONUNBUFFERED": "1"}
        with open(log, "w") as f:
            try:
                rc = subprocess.run([self.python, *args], check=False, cwd=ROOT, env=env, stdout=f,
                                    stderr=subprocess.STDOUT, timeout=limit_s).returncode
                status = "ok" if rc == 0 else f"failed (exit {rc})"
            except subprocess.TimeoutExpired:
                status = f"timed out after {limit_s:.0f} s"
        self.steps[name] = {"status": status, "seconds": round(time.monotonic() - t0, 1)}
        print(f"[{name}] {status} in {self.steps[name]['seconds']} s ({log})", flush=True)
        return status == "ok"

    def setup(self) -> bool:
        """Use this Python as it is if it has everything; else add the shipped wheels."""
        if self._imports_ok():
            self.steps["setup"] = {"status": "ok (nothing to install)", "seconds": 0}
            return True
        if not WHEELS.is_dir():
            self.steps["setup"] = {"status": f"failed: packages missing and no {WHEELS.name}/ (make device-wheels)"}
            return False
        site = self.work / "site"
        ok = self.run("setup", ["-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--target",
                                str(site), "--find-links", str(WHEELS), "-r", str(REQUIREMENTS)], 120)
        self.pythonpath = [str(site), str(ROOT)]
        if ok and not self._imports_ok():
            self.steps["setup"]["status"] = "failed: installed, but the imports still fail (see the log)"
        return self.steps["setup"]["status"] == "ok"

    def _imports_ok(self) -> bool:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(self.pythonpath)}
        with open(self.logs / "imports.log", "a") as f:
            return subprocess.run([self.python, "-c", CHECK_IMPORTS], check=False, env=env, stdout=f,
                                  stderr=subprocess.STDOUT, cwd=ROOT).returncode == 0

    def judge_tests(self, report: Path, dry_run: bool) -> None:
        """The tests step passes only if pytest ran them as it should: on a card every test
        ran and passed (none skipped); in a dry run (no accelerator) every one was skipped."""
        step = self.steps.get("tests")
        if step is None or not report.is_file():
            return
        suite = ET.parse(report).getroot()
        suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        step.update(counts)
        if not step["status"].startswith("ok"):
            return
        if dry_run:
            ok = counts["tests"] > 0 and counts["skipped"] == counts["tests"]
            step["status"] = f"ok (dry run: all {counts['tests']} skipped, no accelerator)" if ok else \
                f"failed: a dry run must skip every accelerator test, got {counts}"
        elif counts["tests"] == 0 or counts["passed"] != counts["tests"]:
            step["status"] = f"failed: {counts['skipped']} skipped, {counts['passed']} of {counts['tests']} passed"

    def read(self, name: str) -> dict:
        path = self.work / name
        return json.loads(path.read_text()) if path.is_file() else {}

    def collect_logs(self) -> None:
        """All step logs, in step order, as one file in OUT."""
        with open(self.out / "device-check.log", "w") as f:
            f.writelines(f"===== {log.stem} =====\n{log.read_text(errors='replace')}\n"
                         for log in sorted(self.logs.glob("*.log"), key=lambda p: p.stat().st_mtime))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="directory for the three result files")
    ap.add_argument("--work", default=None, help="logs, installed wheels, intermediates (default: OUT/../<name>-work)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default="csm-1b-random")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--frames", type=int, default=125, help="frames per request (125 = 10 s)")
    ap.add_argument("--budget-s", type=float, default=480, help="the whole check, setup to table")
    ap.add_argument("--listen-concurrency", type=int, nargs="+", default=[1, 4, 16], help="listen step's levels")
    ap.add_argument("--listen-s", type=float, default=120, help="time the bench leaves for the listen step")
    ap.add_argument("--listen-burst", type=int, default=64, help="listen step's last level: this many at once")
    ap.add_argument("--dry-run", action="store_true", help="CPU, csm-tiny, small batches: the same steps")
    args = ap.parse_args(argv)
    listen_audio_s = 4.0
    if args.dry_run:
        args.device, args.model, args.concurrency, args.frames = "cpu", "csm-tiny", [2, 4], 12
        args.listen_concurrency, args.listen_s, listen_audio_s, args.listen_burst = [1, 2], 60, 1.0, 8
    out = Path(args.out).resolve()
    work = Path(args.work).resolve() if args.work else out.parent / f"{out.name}-work"
    check = Check(out, work, args.budget_s)
    common = ["--device", args.device, "--model", args.model]
    if check.setup():
        check.run("env", ["-m", "benchmarks.device_steps", "env", *common, "--out", str(work / "env.json")], 60)
        junit = work / "tests.xml"
        check.run("tests", ["-m", "pytest", "-m", "accel", "-q", "-rs", "-p", "no:cacheprovider", "--rootdir", str(ROOT),
                            "--junitxml", str(junit), "tests/models/test_accel.py"], 150)
        check.judge_tests(junit, args.dry_run)
        check.run("accuracy", ["-m", "benchmarks.device_steps", "accuracy", *common,
                               "--out", str(work / "accuracy.json")], 120)
        check.run("ops", ["-m", "benchmarks.device_steps", "ops", *common, "--out", str(work / "ops.json")], 90)
        bench_out = work / "accel.json"
        check.run("bench", ["-m", "benchmarks.accel_bench", *common, "--dtype", "bfloat16" if not args.dry_run
                            else "float32", "--concurrency", *map(str, args.concurrency), "--frames", str(args.frames),
                            "--repeats", "1", "--systems", "captured", "eager", "transformers",
                            "--out", str(bench_out)], check.left_s(15 + args.listen_s))
        check.run("listen", ["-m", "benchmarks.listen_check", *common, "--concurrency",
                             *map(str, args.listen_concurrency), "--max-audio-seconds", str(listen_audio_s),
                             "--burst", str(args.listen_burst), "--out", str(work / "listen.json")], check.left_s())
    report = {"steps": check.steps, "env": check.read("env.json"), "accuracy": check.read("accuracy.json"),
              "ops": check.read("ops.json"),
              "bench": check.read("accel.json"), "listen": check.read("listen.json")}
    if report["listen"].get("problems") and not check.steps["listen"]["status"].startswith("ok"):
        check.steps["listen"]["status"] += ": " + "; ".join(report["listen"]["problems"])
    name = report["env"].get("gpu", args.device).replace(" ", "-")
    if report["bench"] or report["listen"]:
        (out / f"accel-{name}.json").write_text(json.dumps({**report["bench"], "env": report["env"],
                                                             "accuracy": report["accuracy"], "ops": report["ops"],
                                                             "listen": report["listen"]}, indent=2) + "\n")
    (out / "device-check.json").write_text(json.dumps(report, indent=2) + "\n")
    check.collect_logs()
    print(table(report, name))
    return 0 if all(s["status"].startswith("ok") for s in check.steps.values()) else 1


def table(report: dict, name: str) -> str:
    """The short summary printed last."""
    lines = [f"== device check: {name} ==", "step       status"]
    lines += [f"{step:<10} {s['status']} ({s.get('seconds', 0)} s)" for step, s in report["steps"].items()]
    acc = report["accuracy"]
    if acc:
        lines.append(f"accuracy   cosine min {acc['cosine_min']:.6f} (mean {acc['cosine_mean']:.6f}) over "
                     f"{acc['codebooks']} codebooks, {'PASS' if acc['passed'] else 'FAIL'} (> {acc['threshold']})")
    for row in report["ops"].get("rows", []):
        lines.append(f"ops        {row['mode']:<8} batch {row['batch']:>3}: {row['cpu_ops']} host ops, "
                     f"{row['device_kernels']} device kernels, step {row['step_ms']:.2f} ms"
                     + (f", {row['whole_frame_replays']} whole-frame replays" if row["mode"] == "captured" else ""))
    sdpa = report["env"].get("sdpa_backend")
    if sdpa:
        lines.append("sdpa       " + ", ".join(f"{k}={v}" for k, v in sdpa.items()))
    results = report["bench"].get("results", {})
    if results:
        lines.append("system        single RTF   TTFF ms   TTFA ms   " + "   ".join(
            f"c={c} frames/s" for c in report["bench"].get("concurrency", [])))
    for system, row in results.items():
        single = row.get("single", {})
        ttfa = row.get("ttfa_single", {}).get("ttfa_p50_s")
        cells = [f"{row['batches'][str(c)]['frames_per_s']:>13.0f}" if str(c) in row.get("batches", {}) else
                 f"{'-':>13}" for c in report["bench"].get("concurrency", [])]
        lines.append(f"{system:<13} {single.get('rtf', float('nan')):>10.4f} {single.get('ttff_p50_s', 0) * 1e3:>9.1f} "
                     f"{(ttfa or 0) * 1e3 if ttfa else float('nan'):>9.1f}   " + "   ".join(cells))
    for k, v in report["bench"].get("speedups", {}).items():
        lines.append(f"speedup    {k}: {v:.2f}x")
    return "\n".join(lines + listen_table(report["listen"]))


def listen_table(listen: dict) -> list[str]:
    """One line per listen level: what real-time listeners heard (ms; - where nothing was measured)."""
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1e3:.0f}"

    if not listen.get("levels"):
        return []
    cfg = listen["config"]
    lines = [f"listen     {cfg['model']} served on {cfg['device']} (ready in {listen.get('server_start_s')} s), pcm "
             + f"streams of {cfg['max_audio_seconds']:g} s played in real time from the first byte"]
    alone = listen.get("engine_alone") or {}
    lines.append(f"listen     engine alone keeps {alone.get('capacity', '-')} streams real time; served at once / that: "
                 f"{listen.get('served_over_engine_alone', '-')}")
    head = ("TTFA ms p50/p95", "RTF p50/p95", "gaps", "streams gapped/held/ok", "min slack ms p5/p50", "429s",
            "refusal ms p50/max", "at once", "capacity")
    lines.append("listen     " + "   ".join(head))
    widths = [len(h) for h in head]
    for lv in listen["levels"]:
        heard, rtf, ttfa, slack = lv["listeners"], lv["rtf"], lv["ttfa_s"], lv["listeners"]["min_slack_s"]
        cells = (f"{ms(ttfa['p50'])}/{ms(ttfa['p95'])}",
                 "/".join("-" if rtf[q] is None else f"{rtf[q]:.2f}" for q in ("p50", "p95")),
                 str(heard["underruns"]),
                 f"{heard['streams_with_underruns']}/{heard['real_time_streams_held']}/{lv['ok']}",
                 f"{ms(slack['p5'])}/{ms(slack['p50'])}", str(lv["errors_by_status"].get("429", 0)),
                 f"{ms(lv['rejections']['latency_s']['p50'])}/{ms(lv['rejections']['latency_s']['max'])}",
                 str(lv.get("max_concurrent_ok", "-")), str(lv.get("capacity_after", "-")))
        lines.append(f"listen {lv['label']:<4}" + "   ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)))
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
