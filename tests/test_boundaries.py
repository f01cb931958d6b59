"""Guard the layering. Packages, from the bottom up: models (the engine), observability (metric
definitions), replica (what one card serves), serve (the protocol edges), clients (apps of
the HTTP API), deployments (Ray and the CLI). Nothing imports upward; `models` and `replica`
load neither ray nor fastapi; the whole `serve` package (every module), `clients`, and the
torch-free records of `models` and `replica` load no torch."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["models", "observability", "replica", "serve", "clients", "deployments"]


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def _imported_packages(path: Path) -> set[str]:
    """The project packages a module imports (absolute imports; relative ones stay inside)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
        found |= {name.split(".")[0] for name in names} & set(LAYERS)
    return found


def test_nothing_imports_upward():
    upward = []
    for i, package in enumerate(LAYERS):
        allowed = set(LAYERS[: i + 1])
        for path in sorted((ROOT / package).rglob("*.py")):
            upward += [f"{path.relative_to(ROOT)} imports {p}" for p in _imported_packages(path) - allowed]
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
    code = ("import importlib, pkgutil, sys, serve, clients, models, models.params, models.errors, "
            "replica.records, replica.voice_store, replica.context_cache, observability.metrics; "
            "[importlib.import_module(m.name) for p in (serve, clients) "
            " for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.')]; "
            "print(sorted(m for m in sys.modules if m.startswith(('serve', 'clients')))); "
            "sys.exit('torch' in sys.modules)")
    result = _run(code)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "serve.routes.speech" in result.stdout and "clients.wyoming.handler" in result.stdout  # it really walked them
