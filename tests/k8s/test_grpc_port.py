"""Triton's gRPC port reaches clients in every overlay: the embedded Serve config's
grpc_options (Serve's gRPC proxy with Triton's servicer), a `grpc` port on every Ray container,
and a Service for it that selects the worker pods KubeRay marks as serving (KubeRay's own serve
Service keeps only the port named `serve`)."""

import pytest

from serve.v2.grpc_messages import add_servicer
from tests.k8s.test_manifests import OVERLAYS, docs, embedded_serve_config, needs_kubectl, pod_templates


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grpc_port_is_configured_exposed_and_served(overlay):
    options = embedded_serve_config(overlay)["grpc_options"]
    assert options["grpc_servicer_functions"] == [f"{add_servicer.__module__}.{add_servicer.__name__}"]
    port = options["port"]
    for name, template in pod_templates(overlay):
        ports = {p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
        assert ports.get("grpc") == port, name
    [service] = [d for d in docs(overlay) if d["kind"] == "Service" and d["metadata"]["name"] == "csm-serve-grpc"]
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(port, "grpc")]
    selector = service["spec"]["selector"]
    assert selector.pop("ray.io/serve") == "true" and selector.pop("ray.io/node-type") == "worker"
    workers = [t for name, t in pod_templates(overlay) if "head" not in name]
    assert workers and all(selector.items() <= t["metadata"]["labels"].items() for t in workers)
