from __future__ import annotations

import os
import shutil
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from helpers import ASSIGNMENT_IDS, ROOT, Course

from tensorgrade.course import Assignment

__all__ = ["ASSIGNMENT_IDS", "ROOT"]  # old imports `from conftest import ...`: use helpers

# Markers given by what a test needs, not by where it is: a test that uses a built course needs
# `otter assign` (seconds per assignment).
NEEDS_BUILD = {"built_course", "built"}


def pytest_configure(config: pytest.Config) -> None:
    """`-m fuzz` runs the property-based tests long (hypothesis profile "long", see
    test_fuzz_intake.py); otherwise they run their short, reproducible profile."""
    expr = config.getoption("markexpr", "") or ""
    if "fuzz" in expr and "not fuzz" not in expr:
        os.environ.setdefault("TENSORGRADE_FUZZ", "long")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if NEEDS_BUILD & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.build)


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def built_course(tmp_path_factory) -> Course:
    """The course built in a temporary folder, each assignment on first use
    (``built_course["01_tensors"]``): tests never write into the repository."""
    return Course(tmp_path_factory.mktemp("course") / "course")


class _InRepo(Mapping[str, Assignment]):
    """The builds of ``built_course`` copied to the repository's own dist/, on first use."""

    def __init__(self, course: Course):
        self._course = course
        self._done: dict[str, Assignment] = {}
        self._lock = threading.Lock()

    def __getitem__(self, aid: str) -> Assignment:
        with self._lock:
            if aid not in self._done:
                built = self._course[aid]
                a = Assignment(aid, ROOT)
                shutil.rmtree(a.dist, ignore_errors=True)
                shutil.copytree(built.dist, a.dist)
                self._done[aid] = a
            return self._done[aid]

    def __iter__(self) -> Iterator[str]:
        return iter(ASSIGNMENT_IDS)

    def __len__(self) -> int:
        return len(ASSIGNMENT_IDS)


@pytest.fixture(scope="session")
def built(built_course) -> Mapping[str, Assignment]:
    """Deprecated: ``built_course``, each build also copied to the repository's dist/ (for tests
    that still read ``ROOT / "dist"`` or grade with ``cwd=ROOT``). New tests use built_course."""
    return _InRepo(built_course)


@pytest.fixture
def interpreter_reachable_by_others():
    """In the grading image the interpreter is world-readable (/opt/conda). On a machine whose
    Python lives under /root (mode 0700), a judge user, or a sandbox uid without a private root,
    could not import the standard library. Let others traverse (not list) the folders above it
    for the test, and put the modes back afterwards."""
    import tensorgrade

    changed = {}
    for top in {Path(sys.base_prefix), Path(sys.prefix), Path(tensorgrade.__file__).parent}:
        for d in top.resolve().parents:
            mode = d.stat().st_mode
            if not mode & 0o001:
                changed.setdefault(d, mode)
                d.chmod(mode | 0o001)
    try:
        yield
    finally:
        for d, mode in changed.items():
            d.chmod(mode & 0o7777)
