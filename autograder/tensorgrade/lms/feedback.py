"""What an LMS is told about one result: the grade to post and a short feedback text.

Shared by the Canvas push and the CSV exports so that both say the same thing. The text is safe to
show to the student before hidden tests are published: per-question totals and the names of failed
*public* tests only; hidden tests' names, messages and expected values never appear.
"""

from __future__ import annotations

import hashlib

from ..results import SubmissionResult

UNGRADABLE_POLICIES = ("blank", "zero")
MARKER_PREFIX = "[tensorgrade "


def points(x: float, places: int = 2) -> str:
    """A score as the LMS should receive it: rounded, no trailing zeros ("7.5", "8", "0.33")."""
    s = f"{round(x, places):.{places}f}".rstrip("0").rstrip(".")
    return "0" if s in ("", "-0") else s


def grade_for(result: SubmissionResult, ungradable: str = "blank") -> float | None:
    """The score to post, or None to leave the LMS grade untouched.

    An ungradable submission (no valid notebook, the grader gave up) gets no grade by default, so
    the instructor looks at it; with ``ungradable="zero"`` it gets 0.
    """
    if ungradable not in UNGRADABLE_POLICIES:
        raise ValueError(f"ungradable policy must be one of {UNGRADABLE_POLICIES}")
    if result.status == "graded":
        return result.score
    return 0.0 if ungradable == "zero" else None


def max_points(results: list[SubmissionResult]) -> float | None:
    """Points possible for the batch: the largest max_score of a graded result (None if none)."""
    graded = [r.max_score for r in results if r.status == "graded"]
    return max(graded) if graded else None


def _first_line(text: str, limit: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def failed_public_tests(result: SubmissionResult) -> list[str]:
    return [f"{t.question}: {t.name}" for t in result.tests if not t.passed and not t.hidden]


def feedback_body(result: SubmissionResult, report_line: str = "") -> str:
    """Multi-line feedback: total, status, per-question scores, failed public tests."""
    lines = [
        f"tensorgrade, {result.assignment}: {points(result.score)} / {points(result.max_score)}"
    ]
    if result.status != "graded":
        lines.append(f"Status: {result.status}: {_first_line(result.reason) or 'no reason given'}")
    for q, (s, m) in result.question_scores().items():
        lines.append(f"{q}: {points(s)} / {points(m)}")
    failed = failed_public_tests(result)
    if failed:
        lines.append("Failed public tests: " + ", ".join(failed))
    if any(t.hidden for t in result.tests):
        lines.append("Hidden tests count in the question scores; their details are not shown here.")
    if report_line:
        lines.append(report_line)
    return "\n".join(lines)


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def marker(result: SubmissionResult, body: str) -> str:
    """The last line of a posted comment: recognises our own comment with exactly this content."""
    return f"{MARKER_PREFIX}{result.assignment} {content_hash(body)}]"


def comment_text(result: SubmissionResult, report_line: str = "") -> tuple[str, str]:
    """The comment to post and its marker line (the comment's last line)."""
    body = feedback_body(result, report_line)
    mark = marker(result, body)
    return f"{body}\n{mark}", mark


def one_line(result: SubmissionResult) -> str:
    """Feedback for a CSV cell: the same facts on one line."""
    parts = [f"{points(result.score)} / {points(result.max_score)}"]
    if result.status != "graded":
        parts.append(f"{result.status}: {_first_line(result.reason, 200) or 'no reason given'}")
    qs = result.question_scores()
    if qs:
        parts.append(", ".join(f"{q} {points(s)}/{points(m)}" for q, (s, m) in qs.items()))
    failed = failed_public_tests(result)
    if failed:
        parts.append("failed public tests: " + ", ".join(failed))
    return "; ".join(parts)
