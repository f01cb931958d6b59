"""Write each overlay's Serve config from serve_config.yaml plus that overlay's production overrides.

    python -m k8s.generate          # rewrite k8s/overlays/<name>/serve-config.yaml
    python -m k8s.generate --check  # exit 1 if a committed file is stale (what the tests check too)

serve_config.yaml is the one source of deployment settings (`make serve` runs it). The RayService
embeds the same application: each overlay's kustomization turns its generated `serve-config.yaml`
into `spec.serveConfigV2` (a configMapGenerator marked local-config, so it never reaches the
cluster, plus a replacement). Change a setting in serve_config.yaml or an override below, re-run
this, and commit the result; tests/k8s fails while the two disagree.

Overrides are deep-merged: dicts merge key by key, other values replace, and a list of named
items (`applications`, `deployments`) is addressed by name, e.g. `{"applications": {"csm": ...}}`.
An override naming an item or key path that serve_config.yaml lacks is an error for list items
(so a renamed deployment cannot silently stop receiving its override).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import yaml

from deployments.autoscaling import policy_config

K8S_DIR = Path(__file__).resolve().parent
REPO_ROOT = K8S_DIR.parent
SOURCE = REPO_ROOT / "serve_config.yaml"
APP = "csm"

# Where the pods mount things (k8s/base/rayservice.yaml, k8s/components/model-volume).
MODEL_DIR = "/models/csm-1b"  # the checkpoint directory on the read-only models PVC (mounted at /models)
VOICES_DIR = "/voices"  # the ReadWriteMany voices PVC
CONVERSATIONS_DIR = "/conversations"  # a subPath of the same PVC

# One engine replica per card; KubeRay's worker group maxReplicas must allow as many workers,
# plus the surge of a rolling update (SURGE_PERCENT of the replicas, rounded up).
MAX_ENGINE_REPLICAS = 8
# A changed Serve config (new model directory, batch size, ...) starts this share of new engine
# replicas on spare cards before old ones drain, so capacity never drops during the update; with
# no spare card the update waits while the old replicas keep serving (0: replace in place).
SURGE_PERCENT = 25
# Serve scales the engine on real-time headroom (deployments/autoscaling.py): a replica is added
# while fewer than max(1, 25% of the replicas' real-time capacity) interactive streams could
# still start, one is removed only if that reserve survives losing its capacity, and never fewer
# than the ongoing-requests policy (target_ongoing_requests) asks for.
ENGINE_AUTOSCALING_POLICY = policy_config(target_headroom=1, headroom_fraction=0.25)

# Every production overlay.
COMMON: dict = {
    # KubeRay's readiness probe on RayService worker pods checks the Serve proxy (/-/healthz on
    # 8000). With HeadOnly no worker ever runs a proxy, so every worker pod would stay unready;
    # EveryNode runs one on each node that hosts a replica, and the serve Service spreads
    # traffic over them (the head pod is excluded from it: excludeHeadPodFromServeSvc).
    "proxy_location": "EveryNode",
    # The proxy must accept connections from the Service, not only from loopback.
    "http_options": {"host": "0.0.0.0"},
    "applications": {
        APP: {
            "args": {
                "engine": {"model": MODEL_DIR},
                "server": {"voices_dir": VOICES_DIR, "conversations_dir": CONVERSATIONS_DIR},
            },
            "deployments": {
                "SpeechReplica": {
                    # target_ongoing_requests stays as in serve_config.yaml (0.75 x max_num_seqs): the
                    # policy's floor.
                    "autoscaling_config": {"min_replicas": 1, "max_replicas": MAX_ENGINE_REPLICAS,
                                           "policy": ENGINE_AUTOSCALING_POLICY},
                    "max_surge_percent": SURGE_PERCENT,
                },
            },
        }
    },
}

_ACCELERATOR_INGRESS = {
    # Two ingress replicas (num_cpus 0, so no card and no CPU reservation): losing one no longer
    # drops every connection while Serve restarts it.
    "SpeechIngress": {"num_replicas": 2},
}

# Per overlay, merged over COMMON. `device` is always explicit: `auto` on an autoscaled cluster
# could resolve to cpu when build_app runs before the first accelerator worker has joined.
OVERLAY_OVERRIDES: dict[str, dict] = {
    "ascend": {
        "applications": {APP: {"args": {"engine": {"device": "npu"}}, "deployments": _ACCELERATOR_INGRESS}},
    },
    "nvidia": {
        "applications": {APP: {"args": {"engine": {"device": "cuda"}}, "deployments": _ACCELERATOR_INGRESS}},
    },
    "cpu": {
        # A small dev cluster: the embedded random model, at most two engine workers.
        "applications": {
            APP: {
                "args": {"engine": {"model": "csm-tiny", "device": "cpu"}},
                "deployments": {"SpeechReplica": {"autoscaling_config": {"max_replicas": 2}}},
            }
        },
    },
}

OVERLAYS = tuple(OVERLAY_OVERRIDES)


def deep_merge(base, override):
    """A new value: `override` merged over `base` (see the module docstring for the rules)."""
    if isinstance(override, dict) and isinstance(base, dict):
        out = copy.deepcopy(base)
        for key, value in override.items():
            out[key] = deep_merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if isinstance(override, dict) and _is_named_list(base):
        out = copy.deepcopy(base)
        index = {item["name"]: i for i, item in enumerate(out)}
        for name, value in override.items():
            if name not in index:
                raise KeyError(f"override names {name!r}, which is not among {sorted(index)}")
            out[index[name]] = deep_merge(out[index[name]], value)
        return out
    return copy.deepcopy(override)


def _is_named_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, dict) and "name" in item for item in value)


def load_source() -> dict:
    return yaml.safe_load(SOURCE.read_text())


def overrides(name: str) -> dict:
    """COMMON merged with the overlay's own overrides."""
    return deep_merge(COMMON, OVERLAY_OVERRIDES[name])


def serve_config(name: str) -> dict:
    """The Serve config the overlay `name` deploys: serve_config.yaml + overrides(name)."""
    return deep_merge(load_source(), overrides(name))


def output_path(name: str) -> Path:
    return K8S_DIR / "overlays" / name / "serve-config.yaml"


def render(name: str) -> str:
    header = (
        f"# GENERATED by `python -m k8s.generate` from serve_config.yaml + the {name!r} overrides in\n"
        "# k8s/generate.py. Do not edit: change those and re-run. kustomize embeds this file as the\n"
        "# RayService's spec.serveConfigV2.\n"
    )
    return header + yaml.safe_dump(serve_config(name), sort_keys=False, default_flow_style=False, width=1000)


def stale() -> list[Path]:
    """Generated files whose committed content differs from what render() gives now."""
    return [
        output_path(name)
        for name in OVERLAYS
        if not output_path(name).is_file() or output_path(name).read_text() != render(name)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report stale files (exit 1 if any)")
    args = parser.parse_args(argv)
    if args.check:
        paths = stale()
        for path in paths:
            print(f"stale: {path.relative_to(REPO_ROOT)} (run: python -m k8s.generate)", file=sys.stderr)
        return 1 if paths else 0
    for name in OVERLAYS:
        path = output_path(name)
        text = render(name)
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
