"""uv.lock and pyproject.toml agree (issue 17: current releases, and a lock that cannot drift).

``uv lock --check`` resolves pyproject.toml against the lock without writing anything (``--offline``: it never
needs the network when they agree). The second test shows the check has teeth: in a copy whose pyproject.toml
asks for a version the lock does not have, the same command fails.
"""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UV = shutil.which("uv")

pytestmark = pytest.mark.skipif(UV is None, reason="uv is not installed (./run installs it)")


def _check(directory: Path) -> subprocess.CompletedProcess[str]:
    assert UV is not None
    return subprocess.run(
        [UV, "lock", "--check", "--offline", "--project", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_lock_matches_pyproject() -> None:
    result = _check(REPO)
    assert result.returncode == 0, result.stderr


def test_a_pyproject_the_lock_does_not_satisfy_is_caught(tmp_path: Path) -> None:
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(REPO / name, tmp_path / name)
    assert _check(tmp_path).returncode == 0  # the copy alone is fine ...
    pyproject = (tmp_path / "pyproject.toml").read_text()
    locked = {p["name"]: p["version"] for p in tomllib.loads((REPO / "uv.lock").read_text())["package"]}
    drifted = pyproject.replace('"msgspec>=', f'"msgspec>{locked["msgspec"]},<99,>=', 1)
    assert drifted != pyproject
    (tmp_path / "pyproject.toml").write_text(drifted)
    assert _check(tmp_path).returncode != 0  # ... until pyproject.toml asks for what the lock lacks


def test_the_runtime_dependencies_are_on_their_current_major_lines() -> None:
    """aio-pika 10 and msgspec 0.23 (issue 17), as locked."""
    locked = {p["name"]: p["version"] for p in tomllib.loads((REPO / "uv.lock").read_text())["package"]}
    assert locked["aio-pika"].startswith("10.")
    assert tuple(int(x) for x in locked["msgspec"].split(".")[:2]) >= (0, 23)
