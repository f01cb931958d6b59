"""Guard the layering: `models` loads neither ray nor fastapi; the whole `serve` package (every
module) and `models`' typed records load no torch."""

import subprocess
import sys


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_models_imports_no_ray_or_fastapi():
    code = ("import sys, models, models.engine, models.frontend.speech; "
            "bad = [m for m in ('ray', 'fastapi') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    result = _run(code)
    assert result.returncode == 0, result.stdout + result.stderr


def test_serve_and_the_typed_records_import_no_torch():
    code = ("import importlib, pkgutil, sys, serve, models, models.params, models.errors; "
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(serve.__path__, 'serve.')]; "
            "print(sorted(m for m in sys.modules if m.startswith('serve'))); sys.exit('torch' in sys.modules)")
    result = _run(code)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "serve.routes.speech" in result.stdout and "serve.backend" in result.stdout  # it really walked them
