"""`tensorgrade audit`: prove an assignment's tests grade what they should.

Grades the solution (must get full marks), the untouched student notebook (must get 0), every
mutant (must lose points on exactly the questions it names) and the automatic non-answers (every
graded name returning zeros, its input unchanged or a constant of another dtype: each must score
0), and lists hidden tests that no mutant fails: such a test checks nothing we can show. Every
question must have a hidden test: otherwise a student sees every check the grader runs.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .course import Assignment
from .grading import GradeOptions, file_sha256, grade_many
from .mutants import NONANSWER_KINDS, Mutant, load_mutants, nonanswer_submissions, submissions
from .results import SubmissionResult
from .submissions import Submission
from .testfiles import TestSpec, load_tests, questions


@dataclass
class AuditReport:
    assignment: str
    results: dict[str, SubmissionResult]
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def lost_questions(r: SubmissionResult) -> set[str]:
    return {q for q, (s, m) in r.question_scores().items() if s < m - 1e-9}


def _first_line(text: str, width: int = 300) -> str:
    """Enough of a failure message to diagnose an audit problem from a CI log."""
    return (text.strip().splitlines() or [""])[0][:width]


def structure_problems(specs: list[TestSpec], mutants: list[Mutant]) -> list[str]:
    """What is wrong with the tests themselves, before any grading: a question without a hidden
    test, a mutant that names a question that does not exist."""
    problems = []
    for q in questions(specs):
        if not any(s.hidden for s in specs if s.question == q):
            public = ", ".join(s.name for s in specs if s.question == q)
            problems.append(
                f"question {q} has no hidden test (only public ones: {public}): students see "
                "every check it is graded by; add a test cell whose first line is `# HIDDEN`"
            )
    known = set(questions(specs))
    for m in mutants:
        unknown = sorted(set(m.loses) - known)
        if unknown:
            problems.append(
                f"mutant {m.name}: loses names question(s) {', '.join(unknown)}, which the "
                f"assignment does not have ({', '.join(questions(specs))})"
            )
    return problems


def nonanswer_problems(results: dict[str, SubmissionResult]) -> list[str]:
    """A non-answer that scores a point: name it and the tests that gave it points."""
    problems = []
    for kind, what in NONANSWER_KINDS.items():
        r = results.get(f"nonanswer-{kind}")
        if r is None:
            continue
        if r.status != "graded":
            problems.append(
                f"non-answer {kind} was not graded (status {r.status}: {r.reason[:200]})"
            )
        elif r.score > 1e-9:
            passed = [f"{t.question}:{t.name}" for t in r.tests if t.passed and t.max_score > 0]
            problems.append(
                f"non-answer {kind} ({what}) scores {r.score:g}/{r.max_score:g}: a test gives "
                f"points to work that does nothing; passed by it: {', '.join(passed)}"
            )
    return problems


def grade_submissions(
    a: Assignment, subs: dict[str, bytes], opts: GradeOptions
) -> dict[str, SubmissionResult]:
    """Grade notebooks given as bytes, keyed by name; results in the order of ``subs``."""
    ag = file_sha256(a.autograder_zip)
    with tempfile.TemporaryDirectory(prefix="tg-audit-") as tmp:
        paths = {}
        for name, data in subs.items():
            p = Path(tmp) / f"{name}.ipynb"
            p.write_bytes(data)
            paths[name] = p
        work = [(a, Submission(name, p)) for name, p in paths.items()]
        results = {sub.key: res for (_, sub), res in grade_many(work, opts, {a.id: ag})}
        return {n: results[n] for n in paths}


def audit(
    a: Assignment,
    engine: str = "trusted",
    jobs: int = 2,
    gpu_slots: int = 0,
    isolation: str = "full",
) -> AuditReport:
    specs = load_tests(a.tests_dir)
    subs = submissions(a)  # a mutant that fits no cell of the solution stops here (MutantError)
    subs.update(nonanswer_submissions(a, specs))
    opts = GradeOptions(
        engine=engine, jobs=jobs, progress=False, gpu_slots=gpu_slots, isolation=isolation
    )
    results = grade_submissions(a, subs, opts)
    mutants = load_mutants(a.mutants) if a.mutants.is_file() else []
    report = AuditReport(a.id, results, structure_problems(specs, mutants))
    sol, blank = results["solution"], results["blank"]
    if sol.status != "graded" or sol.score != sol.max_score:
        failed = [
            f"{t.question}:{t.name}: {_first_line(t.output)}" for t in sol.tests if not t.passed
        ]
        why = f" ({sol.reason.splitlines()[0]})" if sol.reason else ""
        report.problems.append(
            f"solution scores {sol.score:g}/{sol.max_score:g}{why}; fails {failed}"
        )
    if blank.status != "graded" or blank.score != 0:
        report.problems.append(
            f"blank notebook scores {blank.score:g} (status {blank.status}: {blank.reason[:200]})"
        )
    report.problems += nonanswer_problems(results)
    total = sum(s.points for s in specs)
    for m in mutants:
        r = results[f"mutant-{m.name}"]
        lost = lost_questions(r)
        if lost != set(m.loses):
            surprises = [
                f"{t.question}:{t.name}: {_first_line(t.output)}"
                for t in r.tests
                if not t.passed and t.question not in m.loses
            ]
            report.problems.append(
                f"mutant {m.name}: loses {sorted(lost) or 'nothing'}, expected {sorted(m.loses)}"
                + "".join(f"\n      {s}" for s in surprises)
            )
    killed = {
        (t.question, t.name)
        for m in mutants
        for t in results[f"mutant-{m.name}"].tests
        if not t.passed
    }
    for s in specs:
        if s.hidden and (s.question, s.name) not in killed:
            report.problems.append(f"hidden test {s.question}:{s.name} fails no mutant")
    if abs(total - 100) > 1e-9:
        report.problems.append(f"assignment is worth {total:g} points, expected 100")
    return report


def format_report(report: AuditReport) -> str:
    lines = [f"audit of {report.assignment}"]
    for name, r in report.results.items():
        lost = ",".join(sorted(lost_questions(r))) or "-"
        lines.append(
            f"  {name:<40} {r.score:6.2f}/{r.max_score:g}  lost: {lost}  ({r.execution_time:.1f} s)"
        )
    lines += [f"  PROBLEM: {p}" for p in report.problems] or ["  all checks passed"]
    return "\n".join(lines)
