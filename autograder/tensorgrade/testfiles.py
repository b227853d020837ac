"""The built test files of an assignment: which tests exist, their points and visibility.

These files hold hidden tests; only the grader (never a student's process) reads them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from otter.test_files.exception_test import ExceptionTestFile


@dataclass(frozen=True)
class TestSpec:
    __test__ = False  # not a pytest class

    question: str
    index: int  # 1-based position in the question, as otter numbers them ("q1 - 2")
    name: str  # the test function's name
    points: float
    hidden: bool
    func: Callable[..., None]


def load_tests(tests_dir: Path) -> list[TestSpec]:
    if not tests_dir.is_dir():
        raise FileNotFoundError(f"no built tests at {tests_dir}: run `tensorgrade build` first")
    specs: list[TestSpec] = []
    for path in sorted(tests_dir.glob("*.py"), key=lambda p: _qkey(p.stem)):
        tf = ExceptionTestFile.from_file(str(path))
        for i, tc in enumerate(tf.test_cases, start=1):
            specs.append(
                TestSpec(
                    question=tf.name,
                    index=i,
                    name=tc.body.test_func.__name__,
                    points=float(tc.points or 0.0),
                    hidden=bool(tc.hidden),
                    func=tc.body.test_func,
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
