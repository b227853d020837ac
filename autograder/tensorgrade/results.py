"""Grading results: one record per test, Gradescope's results.json, and a batch grades.csv.

Written by the grader only, atomically (temp file + rename), so a killed run never leaves a
half-written result that a later run would trust. Every text field is cleaned as it is set
(``safetext.clean_text``): student code controls much of it, and no writer may fail on it.
A results.json never exceeds ``MAX_RESULTS_BYTES``: figures are dropped first, then long texts
are cut; the tests' outcomes (the scores) are always kept whole.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .errors import NotFoundError
from .safetext import clean_text, cut, cut_lines, sheet_row

# Gradescope visibilities: public tests are shown at once, hidden ones after scores are published.
PUBLIC = "visible"
HIDDEN = "after_published"
# Gradescope and the LMS tools read the whole file; a student's output must not make it huge.
MAX_RESULTS_BYTES = 300_000

# Why a test failed, as data (``TestResult.failure``; "" when it passed). A failed hidden test's
# feedback is exactly the fixed sentence of its class: never a value, shape, name or text that
# came from the student's code, which had seen the hidden inputs.
WRONG_VALUE = "wrong_value"
NOT_FINITE = "not_finite"
WRONG_SHAPE = "wrong_shape"
WRONG_DTYPE = "wrong_dtype"
WRONG_DEVICE = "wrong_device"
WRONG_TYPE = "wrong_type"
NO_RESULT = "no_result"
CHECK_FAILED = "check_failed"
NOT_DEFINED = "not_defined"
RAISED = "raised"
TIMED_OUT = "timed_out"
CRASHED = "crashed"
NOT_RUN = "not_run"
FAILURES: dict[str, str] = {
    WRONG_VALUE: "The result is not accurate enough.",
    NOT_FINITE: "The result contains NaN or infinite values.",
    WRONG_SHAPE: "The result has the wrong shape.",
    WRONG_DTYPE: "The result has the wrong dtype.",
    WRONG_DEVICE: "The result is on the wrong device (keep the device of the inputs).",
    WRONG_TYPE: "The result is not of the expected type or structure.",
    NO_RESULT: "Nothing was returned (None, or the blank is not filled in).",
    CHECK_FAILED: "A check of this test failed.",
    NOT_DEFINED: "The notebook does not define a name this test needs.",
    RAISED: "Your code raised an exception.",
    TIMED_OUT: "Your code did not finish in time.",
    CRASHED: "Your code crashed the sandbox (it ended its process or sent a malformed answer).",
    NOT_RUN: "Not run: the submission ran out of time, or its sandbox could not go on.",
}


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
    failure: str = ""  # one of FAILURES when failed, "" when passed (or an older result)

    def __setattr__(self, name: str, value: object) -> None:
        # texts are cleaned where they enter, however they are set (constructor or assignment)
        super().__setattr__(name, clean_text(value) if isinstance(value, str) else value)

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


def not_run(spec, why: str, failure: str = NOT_RUN) -> TestResult:
    """Zero points for a test (any object with question, name, points, hidden) with a reason."""
    return TestResult(spec.question, spec.name, 0.0, spec.points, False, why, spec.hidden, failure)


@dataclass
class SubmissionResult:
    assignment: str
    submission: str  # the student's name/key in the batch
    engine: str
    status: str  # "graded" or "ungradable"
    tests: list[TestResult] = field(default_factory=list)
    reason: str = ""  # why ungradable, or notes on grading (timeouts, crashes)
    execution_time: float = 0.0
    # what separated the student's code from the grader, layer by layer, as it held:
    # {"level": "full"|"reduced"|"none", "uid": bool, "net": bool, ..., "errors": {layer: text}}
    isolation: dict = field(default_factory=lambda: {"level": "none"})
    source_sha256: str = ""
    autograder_sha256: str = ""  # with source_sha256: a result is reused only if both match
    student_output: str = ""  # what the student's cells printed, before any hidden input was sent
    timings: dict = field(default_factory=dict)  # seconds: startup, cells, tests
    sandbox_uids: list = field(default_factory=list)  # the uids the student's code ran as
    # images the student's own cells displayed: [{"cell": int, "png": base64 str}], size-capped
    figures: list = field(default_factory=list)
    gpu: dict = field(default_factory=dict)  # {"device", "memory_released"} on a GPU machine
    judge_user: str = ""  # who evaluated the hidden tests (the image's unprivileged 'judge')
    # who the submission belongs to, as the LMS's download said (``lms/downloads.py``): e.g.
    # {"source": "canvas", "canvas_user_id": "12345", "late": true, "members": [...]}; {} if none
    lms: dict = field(default_factory=dict)
    # how the batch job that should have graded this submission ended without grading it (a
    # ``slurm.TaskEnd`` value: "CANCELLED", "TIMEOUT", ...); "" for a result a grader wrote
    batch_end: str = ""

    def __setattr__(self, name: str, value: object) -> None:
        super().__setattr__(name, clean_text(value) if isinstance(value, str) else value)

    @property
    def isolation_level(self) -> str:
        return str(self.isolation.get("level", "none"))

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
                "lms": self.lms,
                "batch_end": self.batch_end,
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
            isolation=_isolation(extra.get("isolation")),
            source_sha256=extra.get("source_sha256", ""),
            autograder_sha256=extra.get("autograder_sha256", ""),
            student_output=extra.get("student_output", ""),
            timings=extra.get("timings", {}),
            sandbox_uids=extra.get("sandbox_uids", []),
            figures=extra.get("figures", []),
            gpu=extra.get("gpu", {}),
            judge_user=extra.get("judge_user", ""),
            lms=extra["lms"] if isinstance(extra.get("lms"), dict) else {},
            batch_end=str(extra.get("batch_end") or ""),
        )


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` as UTF-8 via a temp file and a rename; a character UTF-8 cannot hold (a
    lone surrogate that got past the cleaning) becomes "?" instead of failing the write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_results_json(
    result: SubmissionResult, path: Path, limit: int = MAX_RESULTS_BYTES
) -> None:
    atomic_write_text(path, results_json_text(result, limit))


# How far texts are cut, step by step, until a result fits: (characters of each test's output,
# notes kept of the reason, characters of the reason, characters of the student's output).
# The last step also drops the indentation. Tests' names and questions are never cut.
_TEXT_STEPS = [
    (4000, 100, 20_000, 20_000),
    (1000, 30, 5000, 5000),
    (300, 10, 2000, 1000),
    (100, 5, 500, 200),
    (40, 3, 200, 0),
]


def results_json_text(result: SubmissionResult, limit: int = MAX_RESULTS_BYTES) -> str:
    """``result`` as results.json text of at most ``limit`` bytes.

    Figures are dropped first (the last ones first), and texts are cut only if the result is too
    big even without any figure. Every test keeps its score, max_score and status; only if the
    tests alone (their number set by the instructor) overflow is the limit exceeded.
    """
    text = _dump(result)
    if len(text) <= limit:  # ASCII only (json's ensure_ascii): characters are bytes
        return text
    note_room = 400  # for the note saying what was left out (it is written twice)
    bare = replace(result, figures=[])
    indent: int | None = 2
    for step in [None, *_TEXT_STEPS]:
        if step is not None:
            bare = _cut_texts(result, *step)
            indent = None if step is _TEXT_STEPS[-1] else 2
        if len(_dump(bare, indent)) <= limit - note_room:
            break
    kept = _figures_that_fit(bare, result.figures, limit - note_room, indent)
    notes = []
    if kept < len(result.figures):
        notes.append(f"{len(result.figures) - kept} figure(s) left out")
    if bare.reason != result.reason or any(
        a.output != b.output for a, b in zip(bare.tests, result.tests, strict=True)
    ):
        notes.append("long texts cut")
    if bare.student_output != result.student_output:
        notes.append("printed output cut")
    note = f"[{', '.join(notes)}: results.json is limited to {limit // 1000} kB]"
    out = replace(bare, figures=result.figures[:kept])
    out.reason = f"{out.reason}\n{note}" if out.reason else note
    return _dump(out, indent)


def _dump(result: SubmissionResult, indent: int | None = 2) -> str:
    return json.dumps(result.to_gradescope(), indent=indent) + "\n"


def _cut_texts(
    result: SubmissionResult, output: int, notes: int, reason: int, printed: int
) -> SubmissionResult:
    return replace(
        result,
        tests=[replace(t, output=cut(t.output, output)) for t in result.tests],
        figures=[],
        reason=cut_lines(result.reason, notes, reason),
        student_output=cut(result.student_output, printed),
    )


def _figures_that_fit(bare: SubmissionResult, figures: list, limit: int, indent: int | None) -> int:
    """How many of the first ``figures`` fit with ``bare`` in ``limit`` characters (bisection:
    a hand-made result may hold thousands)."""
    lo, hi = 0, len(figures)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(_dump(replace(bare, figures=figures[:mid]), indent)) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo


def read_results_json(path: Path) -> SubmissionResult:
    return SubmissionResult.from_gradescope(json.loads(path.read_text(encoding="utf-8")))


def load_results_dir(out_dir: Path) -> list[SubmissionResult]:
    """Every ``<submission>/results.json`` that `tensorgrade grade` wrote to ``out_dir``, by name.

    Exports, LMS uploads and reports all start here, so they agree on what a batch contains.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise NotFoundError(f"no results folder at {out_dir}")
    paths = sorted(out_dir.glob("*/results.json"))
    if not paths:
        raise NotFoundError(
            f"no <submission>/results.json under {out_dir}: run `tensorgrade grade` first"
        )
    return [read_results_json(p) for p in paths]


def grades_csv(results: list[SubmissionResult]) -> str:
    """One row per submission: total, status, then one column per question."""
    questions = sorted({q for r in results for q in r.question_scores()}, key=_question_key)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["submission", "assignment", "status", "score", "max_score", *questions, "reason"]
    w.writerow(sheet_row(head, _num))
    for r in sorted(results, key=lambda r: r.submission):
        qs = r.question_scores()
        row = [r.submission, r.assignment, r.status, r.score, r.max_score]
        row += [qs[q][0] if q in qs else "" for q in questions]
        row.append(" ".join(r.reason.split())[:300])
        w.writerow(sheet_row(row, _num))
    return buf.getvalue()


def _num(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    return f"{x:.4g}" if x != int(x) else str(int(x))


def _question_key(q: str) -> tuple:
    digits = "".join(ch for ch in q if ch.isdigit())
    return (int(digits) if digits else 0, q)


def _isolation(value: object) -> dict:
    """The isolation record of a results.json (older ones kept only the level, as text)."""
    if isinstance(value, dict):
        return value
    return {"level": value if isinstance(value, str) else "none"}
