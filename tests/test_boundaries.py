"""Guard the layering. Layers, from the bottom up: models (the engine), observability (metric
definitions), stores (voices and conversations as files), contract (the records between the
edges and a replica), then side by side replica (what runs on a card) and serve (the protocol
edges, in the ingress), clients (apps of the HTTP API), deployments (Ray and the CLI). A
package imports its own layer's package and those below, never one above nor its neighbour
in the same layer (serve and replica never import each other); `models` and `replica` load
neither ray nor fastapi; every module of `stores`, `contract`, `serve` and `clients`, and the
torch-free records of `models`, load no torch."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [("models",), ("observability",), ("stores",), ("contract",), ("replica", "serve"), ("clients",),
          ("deployments",)]
PACKAGES = {package for layer in LAYERS for package in layer}


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def _imported_packages(path: Path) -> set[str]:
    """The project packages a module imports (absolute imports; relative ones stay inside)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
        found |= {name.split(".")[0] for name in names} & PACKAGES
    return found


def test_nothing_imports_upward():
    upward = []
    for i, layer in enumerate(LAYERS):
        below = {package for lower in LAYERS[:i] for package in lower}
        for package in layer:
            for path in sorted((ROOT / package).rglob("*.py")):
                upward += [f"{path.relative_to(ROOT)} imports {p}" for p in _imported_packages(path) - below - {package}]
    assert upward == []


def test_the_check_sees_an_upward_import(tmp_path):
    """The control: a module of `replica` importing `serve` is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from serve.app import create_app\nimport models.engine\nfrom . import records\n")
    assert _imported_packages(bad) == {"serve", "models"}


def test_models_and_replica_import_no_ray_or_fastapi():
    code = ("import sys, models, models.engine, models.frontend.engine_loop, replica.replica; "
            "bad = [m for m in ('ray', 'fastapi') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    result = _run(code)
    assert result.returncode == 0, result.stdout + result.stderr


def test_serve_clients_and_the_typed_records_import_no_torch():
    code = ("import importlib, pkgutil, sys, serve, clients, contract, stores, models, models.params, models.errors, "
            "replica.context_cache, observability.metrics; "
            "[importlib.import_module(m.name) for p in (serve, clients, contract, stores) "
            " for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.')]; "
            "print(sorted(m for m in sys.modules if m.startswith(('serve', 'clients', 'contract', 'stores')))); "
            "sys.exit('torch' in sys.modules)")
    result = _run(code)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "serve.routes.speech" in result.stdout and "clients.wyoming.handler" in result.stdout  # it really walked them
    assert "contract.backend" in result.stdout and "stores.settings" in result.stdout
