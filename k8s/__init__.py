"""Kubernetes manifests (kustomize) for csm-serve; `python -m k8s.generate` keeps their Serve configs in sync."""
