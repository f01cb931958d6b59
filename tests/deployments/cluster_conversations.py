"""Conversations on the simulated cluster (run from cluster_check.py): two conversations with
the same history (a recorded turn, then greedy replies to the same texts), turn by turn. Each
turn lands on the replica that holds its conversation's context (the router's affinity: one
replica holds each, the same one every turn), and the twins give the same audio wherever they
run; then the replica holding the first is killed, and its next turn, computed from the store
on another replica, is still the twin's audio."""

from __future__ import annotations

import os
import signal
import time

import httpx
import numpy as np

from tests.deployments.cluster_check import replica_stats


def _speak(url: str, conversation: str, text: str) -> np.ndarray:
    body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm", "temperature": 0,
            "max_audio_seconds": 0.48, "conversation": conversation}
    r = httpx.post(url + "/v1/audio/speech", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return np.frombuffer(r.content, "<i2").astype(np.int32)


def _holders(handle, conversation: str) -> list[int]:
    return sorted(pid for pid, s in replica_stats(handle).items() if conversation in s.conversations)


def _kill(pid: int) -> None:
    """The replica's process dies (SIGKILL: every simulated node runs on this machine)."""
    os.kill(pid, signal.SIGKILL)


def conversations_across(url: str, handle, turns: int = 4) -> dict:
    from tests.conftest import wav_bytes

    ids = []
    for _ in range(2):
        ids.append(httpx.post(url + "/v1/audio/conversations", timeout=30).json()["id"])
        r = httpx.post(url + f"/v1/audio/conversations/{ids[-1]}/turns", timeout=60, data={"transcript": "Hi there."},
                       files={"audio": ("turn.wav", wav_bytes(1.0), "audio/wav")})
        assert r.status_code == 200, r.text
    holders, differences = {cid: [] for cid in ids}, []
    for turn in range(turns):
        pcm = [_speak(url, cid, f"Reply number {turn + 1}.") for cid in ids]
        differences.append(int(np.abs(pcm[0] - pcm[1]).max()))
        time.sleep(0.3)  # the next turn's context is computed after the reply: then it is held
        for cid in ids:
            holders[cid].append(_holders(handle, cid))
    victim = holders[ids[0]][-1][0]
    _kill(victim)
    after = [_speak(url, cid, "After the loss.") for cid in ids]
    time.sleep(0.3)
    return {"holders": [[h for h in holders[cid]] for cid in ids], "max_pcm_difference": differences,
            "killed": victim, "difference_after_loss": int(np.abs(after[0] - after[1]).max()),
            "holders_after_loss": _holders(handle, ids[0]),
            "turns": [len(httpx.get(url + f"/v1/audio/conversations/{cid}", timeout=30).json()["turns"]) for cid in ids]}
