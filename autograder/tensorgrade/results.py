"""Grading results: one record per test, Gradescope's results.json, and a batch grades.csv.

Written by the grader only, atomically (temp file + rename), so a killed run never leaves a
half-written result that a later run would trust.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Gradescope visibilities: public tests are shown at once, hidden ones after scores are published.
PUBLIC = "visible"
HIDDEN = "after_published"


@dataclass
class TestResult:
    __test__ = False  # not a pytest class

    question: str
    name: str  # the test function's name, e.g. test_gaussian_normalised
    score: float
    max_score: float
    passed: bool
    output: str
    hidden: bool

    def to_gradescope(self) -> dict:
        return {
            "name": f"{self.question}: {self.name}",
            "name_format": "text",
            "score": round(self.score, 6),
            "max_score": round(self.max_score, 6),
            "status": "passed" if self.passed else "failed",
            "output": self.output,
            "output_format": "text",  # feedback is plain text, never HTML or markdown
            "visibility": HIDDEN if self.hidden else PUBLIC,
            "tags": [self.question],
        }


def not_run(spec, why: str) -> TestResult:
    """Zero points for a test (any object with question, name, points, hidden) with a reason."""
    return TestResult(spec.question, spec.name, 0.0, spec.points, False, why, spec.hidden)


@dataclass
class SubmissionResult:
    assignment: str
    submission: str  # the student's name/key in the batch
    engine: str
    status: str  # "graded" or "ungradable"
    tests: list[TestResult] = field(default_factory=list)
    reason: str = ""  # why ungradable, or notes on grading (timeouts, crashes)
    execution_time: float = 0.0
    isolation: str = "none"  # what separated the student's code from the grader
    source_sha256: str = ""
    autograder_sha256: str = ""  # with source_sha256: a result is reused only if both match
    student_output: str = ""  # what the student's cells printed, before any hidden input was sent
    timings: dict = field(default_factory=dict)  # seconds: startup, cells, tests
    sandbox_uids: list = field(default_factory=list)  # the uids the student's code ran as
    # images the student's own cells displayed: [{"cell": int, "png": base64 str}], size-capped
    figures: list = field(default_factory=list)
    gpu: dict = field(default_factory=dict)  # {"device", "memory_released"} on a GPU machine
    judge_user: str = ""  # who evaluated the hidden tests (the image's unprivileged 'judge')

    @property
    def score(self) -> float:
        return round(sum(t.score for t in self.tests), 9)

    @property
    def max_score(self) -> float:
        return round(sum(t.max_score for t in self.tests), 9)

    def question_scores(self) -> dict[str, tuple[float, float]]:
        """question -> (score, max_score)."""
        out: dict[str, tuple[float, float]] = {}
        for t in self.tests:
            s, m = out.get(t.question, (0.0, 0.0))
            out[t.question] = (s + t.score, m + t.max_score)
        return out

    def to_gradescope(self) -> dict:
        summary = f"{self.engine} engine: {self.status}"
        if self.reason:
            summary += f"\n{self.reason}"
        if self.student_output:
            summary += f"\n\nOutput of your cells:\n{self.student_output}"
        return {
            "score": round(self.score, 6),
            "execution_time": round(self.execution_time, 3),
            "output": summary,
            # text, not Gradescope's default simple_format (HTML): the summary quotes student output
            "output_format": "text",
            "test_output_format": "text",
            "test_name_format": "text",
            "visibility": "visible",
            "stdout_visibility": "hidden",
            "tests": [t.to_gradescope() for t in self.tests],
            "extra_data": {
                "assignment": self.assignment,
                "submission": self.submission,
                "engine": self.engine,
                "status": self.status,
                "reason": self.reason,
                "isolation": self.isolation,
                "max_score": round(self.max_score, 6),
                "source_sha256": self.source_sha256,
                "autograder_sha256": self.autograder_sha256,
                "student_output": self.student_output,
                "timings": self.timings,
                "sandbox_uids": self.sandbox_uids,
                "figures": self.figures,
                "gpu": self.gpu,
                "judge_user": self.judge_user,
                "tests": [asdict(t) for t in self.tests],
            },
        }

    @classmethod
    def from_gradescope(cls, data: dict) -> SubmissionResult:
        extra = data["extra_data"]
        return cls(
            assignment=extra["assignment"],
            submission=extra["submission"],
            engine=extra["engine"],
            status=extra["status"],
            tests=[TestResult(**t) for t in extra["tests"]],
            reason=extra.get("reason", ""),
            execution_time=float(data.get("execution_time", 0.0)),
            isolation=extra.get("isolation", "none"),
            source_sha256=extra.get("source_sha256", ""),
            autograder_sha256=extra.get("autograder_sha256", ""),
            student_output=extra.get("student_output", ""),
            timings=extra.get("timings", {}),
            sandbox_uids=extra.get("sandbox_uids", []),
            figures=extra.get("figures", []),
            gpu=extra.get("gpu", {}),
            judge_user=extra.get("judge_user", ""),
        )


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_results_json(result: SubmissionResult, path: Path) -> None:
    atomic_write_text(path, json.dumps(result.to_gradescope(), indent=2) + "\n")


def read_results_json(path: Path) -> SubmissionResult:
    return SubmissionResult.from_gradescope(json.loads(path.read_text(encoding="utf-8")))


def load_results_dir(out_dir: Path) -> list[SubmissionResult]:
    """Every ``<submission>/results.json`` that `tensorgrade grade` wrote to ``out_dir``, by name.

    Exports, LMS uploads and reports all start here, so they agree on what a batch contains.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"no results folder at {out_dir}")
    paths = sorted(out_dir.glob("*/results.json"))
    if not paths:
        raise FileNotFoundError(
            f"no <submission>/results.json under {out_dir}: run `tensorgrade grade` first"
        )
    return [read_results_json(p) for p in paths]


def grades_csv(results: list[SubmissionResult]) -> str:
    """One row per submission: total, status, then one column per question."""
    questions = sorted({q for r in results for q in r.question_scores()}, key=_question_key)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["submission", "assignment", "status", "score", "max_score", *questions, "reason"])
    for r in sorted(results, key=lambda r: r.submission):
        qs = r.question_scores()
        w.writerow(
            [
                r.submission,
                r.assignment,
                r.status,
                _num(r.score),
                _num(r.max_score),
                *[_num(qs[q][0]) if q in qs else "" for q in questions],
                r.reason.replace("\n", " ")[:300],
            ]
        )
    return buf.getvalue()


def _num(x: float) -> str:
    return f"{x:.4g}" if x != int(x) else str(int(x))


def _question_key(q: str) -> tuple:
    digits = "".join(ch for ch in q if ch.isdigit())
    return (int(digits) if digits else 0, q)
