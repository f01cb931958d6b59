"""Triton's gRPC port reaches clients in every overlay: the embedded Serve config's
grpc_options (Serve's gRPC proxy with Triton's servicer), a `grpc` port on every Ray container,
and the serve Service exposing it next to HTTP."""

import pytest

from serve.v2.grpc_messages import add_servicer
from tests.k8s.test_manifests import OVERLAYS, embedded_serve_config, needs_kubectl, pod_templates, rayservice


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grpc_port_is_configured_exposed_and_served(overlay):
    options = embedded_serve_config(overlay)["grpc_options"]
    assert options["grpc_servicer_functions"] == [f"{add_servicer.__module__}.{add_servicer.__name__}"]
    port = options["port"]
    for name, template in pod_templates(overlay):
        ports = {p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
        assert ports.get("grpc") == port, name
    service = rayservice(overlay)["spec"]["serveService"]
    assert service["metadata"]["name"] == f"{rayservice(overlay)['metadata']['name']}-serve-svc"
    assert {(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        ("serve", 8000, 8000), ("grpc", port, port)}
