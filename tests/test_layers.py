"""The layers import downwards only (pyproject.toml's import-linter contract): protocol ←
storage ← integrations ← sync_server. Checked here as well as in `make lint`, so CI (which
runs the suite) fails on an upward import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_no_layer_imports_one_above_it() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    checked = subprocess.run(
        [str(lint_imports)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "0 broken" in checked.stdout
