"""The per-student feedback page: score per question, every test's result, figures, printed output.

What a student sees of hidden tests (the policy):

* Public tests: name, points, pass/fail and the full message. Public tests are part of the
  student notebook already, and their messages are written to teach (they may name expected
  values on purpose).
* Hidden tests: name, points and pass/fail only. A failed hidden test never shows its message.
  Instead it shows the label of its class of failure, which the grader recorded as data
  (``TestResult.failure``: "wrong shape", "not accurate enough", "timed out", ...;
  ``FAILURE_LABELS``). Results written before that field existed get a label from keywords in
  the message (``FAILURE_KINDS``). No character of a hidden test's message reaches the page, so
  whatever an instructor wrote into a hidden test's ``what=`` text or assertion message (an
  expected value, a hidden input) cannot leak, while the student still learns what kind of
  mistake to look for. Hidden test code is never in a result.
* ``before_publication=True`` leaves hidden tests out entirely, as Gradescope does with
  ``after_published`` tests until scores are published: the page then shows the public tests
  only, and says that its scores are those of the public tests.

Printed output and figures are the student's own cells' (recorded before any hidden input was
sent), so they are shown as they are, escaped.
"""

from __future__ import annotations

import re

from .. import results as R
from ..results import SubmissionResult, TestResult, _question_key
from .html import esc, num, page, pass_mark, percent, png_data_uri, score_bar
from .incidents import CRASHED, TIMED_OUT

OTHER_FAILURE = "failed"
# The label a failed hidden test shows, by the class of failure the grader recorded.
FAILURE_LABELS: dict[str, str] = {
    R.WRONG_VALUE: "not accurate enough",
    R.NOT_FINITE: "the result contains NaN or infinite values",
    R.WRONG_SHAPE: "wrong shape",
    R.WRONG_DTYPE: "wrong dtype",
    R.WRONG_DEVICE: "wrong device",
    R.WRONG_TYPE: "wrong type of result",
    R.NO_RESULT: "nothing was returned",
    R.CHECK_FAILED: OTHER_FAILURE,
    R.NOT_DEFINED: "not defined in your notebook",
    R.RAISED: "your code raised an exception",
    R.TIMED_OUT: "timed out",
    R.CRASHED: "your code crashed the process",
    R.NOT_RUN: "not run",
}

# For results without a recorded class (older results, the otter engine): (label, pattern
# searched in the failed hidden test's message), first match wins. Only the label is shown.
FAILURE_KINDS: list[tuple[str, re.Pattern[str]]] = [
    ("timed out", TIMED_OUT),
    ("your code crashed the process", CRASHED),
    ("not run", re.compile(r"^\s*not run\b", re.I)),
    ("your code raised an exception", re.compile(r"\braised\b")),
    ("the result contains NaN or infinite values", re.compile(r"\b(NaN|infinite)\b", re.I)),
    ("not accurate enough", re.compile(r"not accurate|relative error|off by", re.I)),
    ("wrong dtype", re.compile(r"\bdtype\b|should be (complex|real)")),
    ("wrong device", re.compile(r"\bdevice\b")),
    ("wrong shape", re.compile(r"\bshape\b")),
    ("nothing was returned", re.compile(r"is None|blank is not filled|is missing|`\.\.\.`")),
    ("wrong type of result", re.compile(r"should be a ")),
]


def failure_label(test: TestResult) -> str:
    """The fixed label that stands in for a failed hidden test's message: from the class of
    failure the grader recorded, else (an older result) from keywords in the message."""
    if test.failure:
        return FAILURE_LABELS.get(test.failure, OTHER_FAILURE)
    return failure_kind(test.output)


def failure_kind(message: str) -> str:
    """The fixed label for a failed hidden test's message (results without a failure class)."""
    for label, pattern in FAILURE_KINDS:
        if pattern.search(message or ""):
            return label
    return OTHER_FAILURE


def shown_message(test: TestResult) -> tuple[str, bool]:
    """(text to show for ``test``, whether it is a stand-in label rather than the message)."""
    if not test.hidden:
        return test.output, False
    if test.passed:
        return "passed", True
    return failure_label(test), True


def visible_tests(result: SubmissionResult, before_publication: bool = False) -> list[TestResult]:
    """The tests the page lists: all of them, or the public ones before publication."""
    return [t for t in result.tests if not (before_publication and t.hidden)]


def by_question(tests: list[TestResult]) -> dict[str, list[TestResult]]:
    """Tests grouped by question, questions in natural order (q2 before q10), tests as given."""
    groups: dict[str, list[TestResult]] = {}
    for t in tests:
        groups.setdefault(t.question, []).append(t)
    return {q: groups[q] for q in sorted(groups, key=_question_key)}


def student_report(result: SubmissionResult, before_publication: bool = False) -> str:
    """The whole feedback page for one submission, as an HTML string."""
    tests = visible_tests(result, before_publication)
    groups = by_question(tests)
    score = sum(t.score for t in tests)
    max_score = sum(t.max_score for t in tests)
    parts = [_header(result, score, max_score)]
    if before_publication and len(tests) < len(result.tests):
        n = len(result.tests) - len(tests)
        parts.append(
            '<p class="note">Only the public tests are shown so far. '
            f"{n} hidden test(s) will appear here when scores are published; the scores above "
            "are those of the public tests.</p>"
        )
    if result.status != "graded":
        parts.append(
            '<div class="note bad"><strong>Your notebook could not be graded.</strong>'
            f'<div class="msg">{esc(result.reason)}</div></div>'
        )
    parts.append(_question_table(groups))
    parts.append(_test_tables(groups))
    if result.status == "graded" and result.reason:
        parts.append(
            "<section><h2>Notes from grading</h2>"
            '<p class="muted">What happened while your cells ran.</p>'
            f"<pre>{esc(result.reason)}</pre></section>"
        )
    parts.append(_figures(result.figures))
    if result.student_output:
        parts.append(
            "<section><h2>Output of your cells</h2>"
            '<p class="muted">What your own cells printed.</p>'
            f"<pre>{esc(result.student_output)}</pre></section>"
        )
    parts.append(
        '<p class="muted">Hidden tests show their name, points and whether they passed; for a '
        "failed hidden test, only the kind of failure. Their code and expected values are never "
        "shown.</p>"
    )
    title = f"{result.assignment}: feedback for {result.submission}"
    return page(title, "\n".join(p for p in parts if p))


def _header(result: SubmissionResult, score: float, max_score: float) -> str:
    pct = percent(score, max_score)
    return (
        f"<header><h1>Feedback on {esc(result.assignment)}</h1>"
        f'<p class="sub">Submission <strong>{esc(result.submission)}</strong></p>'
        f'<div class="total"><span>Score <strong class="score">{num(score)} / '
        f"{num(max_score)}</strong> ({pct:.0f}%)</span>{score_bar(score, max_score)}</div>"
        "</header>"
    )


def _question_table(groups: dict[str, list[TestResult]]) -> str:
    if not groups:
        return ""
    rows = []
    for q, tests in groups.items():
        s = sum(t.score for t in tests)
        m = sum(t.max_score for t in tests)
        passed = sum(t.passed for t in tests)
        rows.append(
            f'<tr><td><a href="#q-{esc(q)}">{esc(q)}</a></td>'
            f'<td class="num">{num(s)} / {num(m)}</td><td>{score_bar(s, m)}</td>'
            f'<td class="num">{passed} of {len(tests)}</td></tr>'
        )
    return (
        '<section><h2>Score per question</h2><table class="questions fixed">'
        '<colgroup><col style="width:22%"><col style="width:16%"><col style="width:34%">'
        "<col></colgroup><thead><tr>"
        '<th>Question</th><th class="num">Points</th><th></th><th class="num">Tests passed</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></section>"
    )


def _test_tables(groups: dict[str, list[TestResult]]) -> str:
    if not groups:
        return ""
    out = ["<section><h2>Tests</h2>"]
    for q, tests in groups.items():
        s = sum(t.score for t in tests)
        m = sum(t.max_score for t in tests)
        rows = []
        for t in tests:
            text, stand_in = shown_message(t)
            message = f'<span class="standin">{esc(text)}</span>' if stand_in else esc(text)
            rows.append(
                f"<tr><td>{esc(t.name)}</td>"
                f'<td><span class="kind">{"hidden" if t.hidden else "public"}</span></td>'
                f"<td>{pass_mark(t.passed)}</td>"
                f'<td class="num">{num(t.score)} / {num(t.max_score)}</td>'
                f'<td class="msg">{message}</td></tr>'
            )
        out.append(
            f'<h3 id="q-{esc(q)}">{esc(q)} <span class="muted">({num(s)} / {num(m)})</span></h3>'
            '<table class="tests fixed"><colgroup><col style="width:30%"><col style="width:9%">'
            '<col style="width:12%"><col style="width:10%"><col></colgroup>'
            "<thead><tr><th>Test</th><th>Kind</th><th>Result</th>"
            f'<th class="num">Points</th><th>Message</th></tr></thead><tbody>{"".join(rows)}'
            "</tbody></table>"
        )
    out.append("</section>")
    return "".join(out)


def _figures(figures: list) -> str:
    shown, bad = [], 0
    for fig in figures or []:
        uri = png_data_uri(fig.get("png")) if isinstance(fig, dict) else None
        if uri is None:
            bad += 1
            continue
        try:
            cell = f"cell {int(fig.get('cell'))}"
        except (TypeError, ValueError):
            cell = "a cell"
        shown.append(
            f'<figure><img src="{uri}" alt="figure drawn by {cell}">'
            f"<figcaption>Drawn by {cell} of your notebook</figcaption></figure>"
        )
    if not shown and not bad:
        return ""
    note = f'<p class="muted">{bad} figure(s) could not be shown.</p>' if bad else ""
    return (
        "<section><h2>Your figures</h2>"
        '<p class="muted">Pictures your own cells drew, e.g. your result next to the truth.</p>'
        f"{''.join(shown)}{note}</section>"
    )
