"""The optional Wyoming component (k8s/components/wyoming) added to each overlay: it builds,
its Deployment and Service validate strictly against the Kubernetes schemas, and it points at
the RayService's serve Service and runs `csm-serve wyoming` on Wyoming's port."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml

from clients.wyoming.api import WyomingSettings
from tests.k8s.test_manifests import K8S, K8S_VERSIONS, KUBECTL, OVERLAYS, needs_kubectl, rayservice


def with_wyoming(overlay: str, tmp_path) -> list[dict]:
    """What an operator's own overlay builds: an overlay of this repo plus the component."""
    up = os.path.relpath(K8S, tmp_path)  # kustomize takes relative paths only
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [f"{up}/overlays/{overlay}"], "components": [f"{up}/components/wyoming"],
    }))
    proc = subprocess.run([KUBECTL, "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_wyoming_component_builds_validates_and_points_at_serve(overlay, tmp_path):
    kv = pytest.importorskip("kubernetes_validate.utils", reason="kubernetes-validate is not installed")
    docs = with_wyoming(overlay, tmp_path)
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    [service] = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "csm-serve-wyoming"]
    for version in K8S_VERSIONS:
        version = kv.latest_version() if version == "latest" else version
        for obj in (deployment, service):
            kv.validate(obj, version, strict=True)
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    [container] = pod["spec"]["containers"]
    assert container["command"] == ["csm-serve", "wyoming"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert set(env) <= {f"CSM_WYOMING_{name.upper()}" for name in WyomingSettings.model_fields}  # read by the app
    assert env["CSM_WYOMING_URI"] == "tcp://0.0.0.0:10200"
    assert env["CSM_WYOMING_API_URL"] == f"http://{rayservice(overlay)['metadata']['name']}-serve-svc:8000"
    assert [p["port"] for p in service["spec"]["ports"]] == [10200]
    assert all(d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "csm-serve" for d in (deployment, service))
