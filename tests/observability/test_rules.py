"""Dashboard and alert rules: generated, never hand-edited; every expression parses with
promtool; promtool unit tests show each alert firing and not firing."""

import shutil
import subprocess

import pytest
import yaml

from observability import build
from observability.queries import ALERTS, PANELS

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) is not installed")


def concrete(expr: str) -> str:
    """A dashboard expression with Grafana's variables filled in, as Grafana sends it."""
    return expr.replace("$application", ".*").replace("$replica", ".*").replace("$__rate_interval", "1m")


def all_expressions() -> list[str]:
    return [concrete(e) for _, _, targets in PANELS for _, e in targets] + [a["expr"] for a in ALERTS]


def test_committed_files_are_generated():
    for path, text in build.rendered().items():
        assert path.read_text() == text, f"{path} differs: run `python -m observability.build`"


def test_dashboard_has_the_panels_and_variables_operators_need():
    dash = build.dashboard()
    titles = " ".join(p["title"] for p in dash["panels"])
    for word in ("Real-time factor", "first audio", "audio seconds per second", "batch size", "Running / waiting",
                 "memory", "Error rate", "replicas", "underruns", "buffered audio"):
        assert word in titles
    assert {v["name"] for v in dash["templating"]["list"]} >= {"cluster", "application", "replica"}
    rtf = next(p for p in dash["panels"] if p["title"].startswith("Real-time factor"))
    assert any(t["expr"] == "vector(1)" for t in rtf["targets"])  # the real-time line


@needs_promtool
def test_every_expression_parses(tmp_path):
    rules = {"groups": [{"name": "check", "rules": [{"record": f"check:expr{i}", "expr": e}
                                                     for i, e in enumerate(all_expressions())]}]}
    path = tmp_path / "exprs.yaml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_alert_rules_fire_and_stay_quiet():
    result = subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yaml"], capture_output=True, text=True,
                            cwd=build.RULES.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {line.split(":", 1)[1].split("#")[0].strip() for line in (build.RULES.parent / "alerts_test.yaml").read_text().splitlines()
              if line.strip().startswith("alertname:")}
    assert tested == {a["alert"] for a in ALERTS}
