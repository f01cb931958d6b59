"""Every overlay ships the generated dashboard (as a Grafana-sidecar ConfigMap) and rules."""

import json
import shutil
import subprocess

import pytest
import yaml

from observability import build

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")


@pytest.mark.parametrize("overlay", ["ascend", "nvidia", "cpu"])
def test_overlay_ships_dashboard_and_rules(overlay):
    out = subprocess.run(["kubectl", "kustomize", f"k8s/overlays/{overlay}"], capture_output=True, text=True, check=True)
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out.stdout) if d}
    dashboard = docs[("ConfigMap", "csm-serve-grafana-dashboard")]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["csm-serve.json"]) == build.dashboard()
    assert docs[("PrometheusRule", "csm-serve")]["spec"] == build.rule_groups()
