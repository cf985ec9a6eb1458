"""What an installed server needs beyond its Python files is in the package (the Docker image
and `pip install .` get only what pyproject.toml's package-data names: the tests, run from the
source tree, would never notice a template left out)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_data_file_of_a_package_is_shipped() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_data: dict[str, list[str]] = config["tool"]["setuptools"]["package-data"]
    unshipped = []
    for package in ("protocol", "storage", "integrations", "sync_server"):
        folder = ROOT / package
        shipped = {
            path for pattern in package_data.get(package, []) for path in folder.glob(pattern)
        }
        for path in folder.rglob("*"):
            if path.is_file() and path.suffix not in {".py", ".pyc"} and path not in shipped:
                unshipped.append(str(path.relative_to(ROOT)))
    assert unshipped == []
