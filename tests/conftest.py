from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tensorgrade.course import Assignment, all_assignments

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENT_IDS = [a.id for a in all_assignments(ROOT)]


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def built() -> dict[str, Assignment]:
    """Build every assignment once per test session (dist/ is build output)."""
    proc = subprocess.run(
        [sys.executable, "-m", "tensorgrade", "build"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {a.id: a for a in all_assignments(ROOT)}
