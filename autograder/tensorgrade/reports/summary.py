"""The instructor's summary of a graded batch: where the class struggles and what went wrong.

One page with, per assignment, a score histogram, the mean score per question and every test's
pass rate (lowest first: the tests most students fail); then the ungradable, timed-out and
crashed submissions, the slowest ones, and a link to every student page. It names hidden tests
and quotes their messages: it is for instructors, not for students.

Pass rates count graded submissions only: an ungradable notebook fails every test without
having tried, and would hide which tests are hard. Ungradable submissions are listed instead.
"""

from __future__ import annotations

import io
import statistics
from collections import Counter
from dataclasses import dataclass
from urllib.parse import quote

from ..results import SubmissionResult, _question_key
from .html import esc, num, page, percent, png_data_uri, score_bar
from .incidents import incidents

SLOWEST = 10  # how many of the slowest submissions the summary lists
HIST_COLOR = "#3a7d8c"  # its own colour, so a screenshot test can find the histogram


@dataclass
class TestRate:
    """How many graded submissions passed one test."""

    __test__ = False  # not a pytest class

    assignment: str
    question: str
    name: str
    hidden: bool
    passed: int
    total: int
    common_failure: str = ""  # the most frequent failure message (first line)
    failures: int = 0  # how many submissions failed with ``common_failure``

    @property
    def rate(self) -> float:
        return self.passed / self.total if self.total else 0.0


def pass_rates(results: list[SubmissionResult]) -> list[TestRate]:
    """Every test's pass rate over the graded submissions, lowest rate first."""
    rates: dict[tuple[str, str, str], TestRate] = {}
    fails: dict[tuple[str, str, str], Counter] = {}
    for r in results:
        if r.status != "graded":
            continue
        for t in r.tests:
            key = (r.assignment, t.question, t.name)
            rate = rates.setdefault(key, TestRate(*key, hidden=t.hidden, passed=0, total=0))
            rate.total += 1
            if t.passed:
                rate.passed += 1
            else:
                first = (t.output.strip().splitlines() or [""])[0][:200]
                fails.setdefault(key, Counter())[first] += 1
    for key, counter in fails.items():
        rates[key].common_failure, rates[key].failures = counter.most_common(1)[0]
    return sorted(
        rates.values(),
        key=lambda x: (x.rate, x.assignment, _question_key(x.question), x.name),
    )


def slowest(results: list[SubmissionResult], n: int = SLOWEST) -> list[SubmissionResult]:
    """The ``n`` submissions that took longest to grade, slowest first."""
    timed = [r for r in results if r.execution_time > 0]
    return sorted(timed, key=lambda r: (-r.execution_time, r.submission))[:n]


def histogram_png(scores: list[float], max_score: float) -> bytes:
    """A bar chart of how many submissions got each score, as PNG bytes (matplotlib Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7, 2.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    top = max([max_score, *scores, 1.0])
    if top == int(top) and top <= 40 and all(s == int(s) for s in scores):
        bins = [x - 0.5 for x in range(int(top) + 2)]
    else:
        bins = [top * k / 20 for k in range(21)]
    ax.hist(scores, bins=bins, color=HIST_COLOR, edgecolor="white")
    ax.set_xlabel(f"score (points, out of {num(max_score)})")
    ax.set_ylabel("submissions")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(bins[0], bins[-1])
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def summary_report(results: list[SubmissionResult], links: dict[str, str] | None = None) -> str:
    """The summary page; ``links`` maps a submission to the file name of its student page."""
    links = links or {}
    assignments = sorted({r.assignment for r in results})
    graded = sum(r.status == "graded" for r in results)
    parts = [
        f"<header><h1>Class summary: {esc(', '.join(assignments))}</h1>"
        f'<p class="sub">{len(results)} submission(s): {graded} graded, '
        f"{len(results) - graded} ungradable.</p>"
        '<p class="note warn">For instructors only: this page names hidden tests and quotes '
        "their failure messages. Give students their own pages.</p></header>"
    ]
    rates = pass_rates(results)
    for a in assignments:
        mine = [r for r in results if r.assignment == a]
        heading = f"<h2>{esc(a)}</h2>" if len(assignments) > 1 else ""
        parts.append(f'<section class="assignment">{heading}{_scores(mine)}')
        parts.append(_questions(mine))
        parts.append(_rates([x for x in rates if x.assignment == a]) + "</section>")
    parts.append(_ungradable(results, links))
    parts.append(_incident_lists(results, links))
    parts.append(_slowest(slowest(results), links))
    parts.append(_everyone(results, links))
    return page(f"Summary: {', '.join(assignments)}", "\n".join(parts))


def _link(submission: str, links: dict[str, str]) -> str:
    if submission in links:
        return f'<a href="{esc(quote(links[submission]))}">{esc(submission)}</a>'
    return esc(submission)


def _scores(results: list[SubmissionResult]) -> str:
    scores = [r.score for r in results]
    max_score = max(r.max_score for r in results)
    uri = png_data_uri(histogram_png(scores, max_score))
    full = sum(s >= max_score > 0 for s in scores)
    stats = [
        ("submissions", str(len(scores))),
        ("mean", f"{statistics.fmean(scores):.3g}"),
        ("median", num(statistics.median(scores))),
        ("lowest", num(min(scores))),
        ("highest", num(max(scores))),
        ("full marks", str(full)),
    ]
    cells = "".join(f'<tr><th>{k}</th><td class="num">{v}</td></tr>' for k, v in stats)
    alt = f"Histogram of {len(scores)} scores out of {num(max_score)}"
    return (
        f'<h2>Scores <span class="muted">(out of {num(max_score)})</span></h2><div class="scores">'
        f'<img class="histogram" src="{uri}" alt="{esc(alt)}" style="max-width:100%">'
        f'<table class="stats">{cells}</table></div>'
    )


def _questions(results: list[SubmissionResult]) -> str:
    totals: dict[str, list[float]] = {}
    for r in results:
        for q, (s, m) in r.question_scores().items():
            t = totals.setdefault(q, [0.0, 0.0])
            t[0] += s
            t[1] += m
    rows = []
    for q in sorted(totals, key=_question_key):
        s, m = totals[q]
        n = len(results)
        rows.append(
            f'<tr><td>{esc(q)}</td><td class="num">{num(round(s / n, 3))} / '
            f"{num(round(m / n, 3))}</td><td>{score_bar(s, m)}</td>"
            f'<td class="num">{percent(s, m):.0f}%</td></tr>'
        )
    return (
        '<h3>Mean score per question</h3><table class="fixed"><colgroup>'
        '<col style="width:22%"><col style="width:18%"><col style="width:35%"><col></colgroup>'
        "<thead><tr><th>Question</th>"
        '<th class="num">Mean points</th><th></th><th class="num">%</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _rates(rates: list[TestRate]) -> str:
    if not rates:
        return "<h3>Tests</h3><p>No graded submissions.</p>"
    rows = []
    for x in rates:
        failure = ""
        if x.common_failure:
            failure = f"{esc(x.common_failure)} <span class='muted'>({x.failures}&times;)</span>"
        rows.append(
            f"<tr><td>{esc(x.question)}</td><td>{esc(x.name)}</td>"
            f'<td><span class="kind">{"hidden" if x.hidden else "public"}</span></td>'
            f'<td class="num">{x.passed} of {x.total}</td>'
            f'<td class="num">{100 * x.rate:.0f}%</td><td>{score_bar(x.passed, x.total)}</td>'
            f'<td class="msg">{failure}</td></tr>'
        )
    return (
        '<h3>Tests, lowest pass rate first</h3><p class="muted">Out of the graded submissions '
        '(ungradable ones are listed below).</p><table class="rates fixed"><colgroup>'
        '<col style="width:9%"><col style="width:28%"><col style="width:7%">'
        '<col style="width:8%"><col style="width:6%"><col style="width:10%"><col></colgroup>'
        "<thead><tr>"
        "<th>Question</th><th>Test</th><th>Kind</th>"
        '<th class="num">Passed</th><th class="num">Rate</th><th></th>'
        "<th>Most common failure</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _ungradable(results: list[SubmissionResult], links: dict[str, str]) -> str:
    bad = [r for r in results if r.status != "graded"]
    rows = "".join(
        f'<tr><td>{_link(r.submission, links)}</td><td class="msg">{esc(r.reason)}</td></tr>'
        for r in sorted(bad, key=lambda r: r.submission)
    )
    body = (
        f"<table><thead><tr><th>Submission</th><th>Reason</th></tr></thead><tbody>{rows}"
        "</tbody></table>"
        if bad
        else "<p>None.</p>"
    )
    return f'<section id="ungradable"><h2>Ungradable ({len(bad)})</h2>{body}</section>'


def _incident_lists(results: list[SubmissionResult], links: dict[str, str]) -> str:
    found = {r.submission: incidents(r) for r in sorted(results, key=lambda r: r.submission)}
    out = []
    for key, title in (("timed_out", "Timed out"), ("crashed", "Crashed")):
        hits = {s: getattr(i, key) for s, i in found.items() if getattr(i, key)}
        rows = []
        for s, lines in hits.items():
            more = f"\n... and {len(lines) - 3} more" if len(lines) > 3 else ""
            text = esc("\n".join(lines[:3]) + more)
            rows.append(f'<tr><td>{_link(s, links)}</td><td class="msg">{text}</td></tr>')
        body = (
            f"<table><thead><tr><th>Submission</th><th>What happened</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
            if hits
            else "<p>None.</p>"
        )
        out.append(f'<section id="{key}"><h2>{title} ({len(hits)})</h2>{body}</section>')
    return "\n".join(out)


def _slowest(results: list[SubmissionResult], links: dict[str, str]) -> str:
    if not results:
        return '<section id="slowest"><h2>Slowest submissions</h2><p>No timings.</p></section>'
    phases = ["startup", "cells", "tests"]
    rows = []
    for r in results:
        cells = "".join(
            f'<td class="num">{r.timings[p]:.1f}</td>'
            if isinstance(r.timings.get(p), (int, float))
            else '<td class="num">-</td>'
            for p in phases
        )
        rows.append(
            f'<tr><td>{_link(r.submission, links)}</td><td class="num">{r.execution_time:.1f}</td>'
            f"{cells}</tr>"
        )
    head = "".join(f'<th class="num">{p} (s)</th>' for p in phases)
    return (
        f'<section id="slowest"><h2>Slowest submissions <span class="muted">(up to '
        f"{SLOWEST})</span></h2><table><thead><tr><th>Submission</th>"
        f'<th class="num">total (s)</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody>'
        "</table></section>"
    )


def _everyone(results: list[SubmissionResult], links: dict[str, str]) -> str:
    rows = "".join(
        f"<tr><td>{_link(r.submission, links)}</td><td>{esc(r.assignment)}</td>"
        f'<td class="num">{num(r.score)} / {num(r.max_score)}</td>'
        f"<td>{score_bar(r.score, r.max_score)}</td><td>{esc(r.status)}</td></tr>"
        for r in sorted(results, key=lambda r: r.submission)
    )
    return (
        '<section id="submissions"><h2>All submissions</h2><table><thead><tr><th>Submission</th>'
        '<th>Assignment</th><th class="num">Score</th><th></th><th>Status</th></tr></thead>'
        f"<tbody>{rows}</tbody></table></section>"
    )
