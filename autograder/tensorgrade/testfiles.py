"""The built test files of an assignment: which tests exist, their points and visibility.

These files hold hidden tests; only the grader (never a student's process) reads them.

otter assign writes each question as a Python file that starts with
``from otter.test_files import test_case`` and decorates each test function with
``@test_case(points=..., hidden=...)``. Importing otter to read them costs about 0.6 s (pandas,
nbconvert), which is most of a single submission's start-up beyond ``import torch``; so the file is
run here with a ``test_case`` of our own in place of otter's, and the points are resolved as otter
resolves them (tests/test_testfiles.py compares the two on every assignment).
"""

from __future__ import annotations

import builtins
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TestSpec:
    __test__ = False  # not a pytest class

    question: str
    index: int  # 1-based position in the question, as otter numbers them ("q1 - 2")
    name: str  # the test function's name
    points: float
    hidden: bool
    func: Callable[..., None]


class test_case:  # noqa: N801 - the name the test files import
    """Stands in for ``otter.test_files.test_case``: records a test function and its options."""

    def __init__(
        self,
        name: str | None = None,
        points: float | None = None,
        hidden: bool = False,
        success_message: str | None = None,
        failure_message: str | None = None,
    ):
        self.name, self.points, self.hidden = name, points, hidden
        self.func: Callable[..., None] | None = None

    def __call__(self, func: Callable[..., None]) -> test_case:
        self.func = func
        return self


_OTTER_TEST_FILES = types.ModuleType("otter.test_files")
_OTTER_TEST_FILES.test_case = test_case  # type: ignore[attr-defined]


def _import(name, globals=None, locals=None, fromlist=(), level=0):  # noqa: A002
    """``import`` inside a test file: otter's test-file module is ours, the rest is Python's."""
    if name == "otter.test_files" and fromlist and level == 0:
        return _OTTER_TEST_FILES
    return builtins.__import__(name, globals, locals, fromlist, level)


def read_test_file(path: Path) -> tuple[str, list[test_case]]:
    """Run one test file: its question name and its test cases, with their points resolved."""
    env: dict[str, Any] = {"__builtins__": {**vars(builtins), "__import__": _import}}
    exec(compile(path.read_text(), str(path), "exec"), env)  # noqa: S102 - our own built file
    if "name" not in env:
        raise ValueError(f"test file {path} does not define 'name'")
    cases = [v for v in env.values() if isinstance(v, test_case) and v.func is not None]
    return str(env["name"]), resolve_points(env.get("points"), cases, path)


def resolve_points(total: Any, cases: list[test_case], path: Path) -> list[test_case]:
    """Each case's points, as otter decides them: a list gives each case its own; a question
    total is shared equally by the cases without points of their own; with neither, a question
    whose cases name no points is worth 1, shared equally, and otherwise unnamed cases get 0."""
    if isinstance(total, list):
        if len(total) != len(cases):
            raise ValueError(f"{path}: {len(total)} point values for {len(cases)} tests")
        for case, p in zip(cases, total, strict=True):
            case.points = p
        total = None
    elif total is not None and not isinstance(total, int | float):
        raise TypeError(f"{path}: points must be a number or a list, not {type(total).__name__}")
    named = [c.points for c in cases if c.points is not None]
    if any(type(p) not in (int, float) for p in named):
        raise TypeError(f"{path}: a test's points must be a number")
    unnamed = sum(c.points is None for c in cases)
    if total is not None:
        if sum(named) > total:
            raise ValueError(f"{path}: the tests name more points than the question's {total}")
        share = (total - sum(named)) / unnamed if unnamed else 0.0
    elif sum(named) == 0 and all(p == 0 for p in named):
        share = 1 / unnamed if unnamed else 0.0
    else:
        share = 0.0
    for case in cases:
        if case.points is None:
            case.points = share
    return cases


def load_tests(tests_dir: Path) -> list[TestSpec]:
    if not tests_dir.is_dir():
        raise FileNotFoundError(f"no built tests at {tests_dir}: run `tensorgrade build` first")
    specs: list[TestSpec] = []
    for path in sorted(tests_dir.glob("*.py"), key=lambda p: _qkey(p.stem)):
        question, cases = read_test_file(path)
        for i, case in enumerate(cases, start=1):
            assert case.func is not None
            specs.append(
                TestSpec(
                    question=question,
                    index=i,
                    name=case.func.__name__,
                    points=float(case.points or 0.0),
                    hidden=bool(case.hidden),
                    func=case.func,
                )
            )
    return specs


def questions(specs: list[TestSpec]) -> list[str]:
    seen: dict[str, None] = {}
    for s in specs:
        seen.setdefault(s.question)
    return list(seen)


def _qkey(stem: str) -> tuple:
    digits = "".join(ch for ch in stem if ch.isdigit())
    return (int(digits) if digits else 0, stem)
