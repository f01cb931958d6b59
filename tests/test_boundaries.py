"""Guard the layering: importing `models` loads neither ray nor fastapi."""

import subprocess
import sys


def test_models_imports_no_ray_or_fastapi():
    code = "import sys, models; bad = [m for m in ('ray', 'fastapi') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
