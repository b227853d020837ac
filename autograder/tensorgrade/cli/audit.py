"""`tensorgrade audit` and `tensorgrade examples`: do an assignment's tests grade what they should."""

from __future__ import annotations

import argparse
import sys

from ..errors import NotFoundError
from . import options


def _not_built(a) -> NotFoundError:
    return NotFoundError(f"{a.id} is not built: run `tensorgrade build {a.id}`")


def audit(args: argparse.Namespace) -> int:
    from ..audit import audit as audit_one
    from ..audit import format_report
    from ..config import check_assignment

    _, assignments = options.course_assignments(args.ids)
    for a in assignments:  # a bad grading.yml is named before anything is graded
        check_assignment(a)
    ok = True
    for a in assignments:
        if not a.autograder_zip.is_file():
            raise _not_built(a)
        print(f"{a.id}: grading solution, blank notebook and mutants ...", file=sys.stderr)
        report = audit_one(a, engine=args.engine, jobs=args.jobs)
        print(format_report(report))
        ok &= report.ok
    return 0 if ok else 1


def examples(args: argparse.Namespace) -> int:
    from ..mutants import submissions

    _, (a,) = options.course_assignments([args.id])
    if not a.solution.is_file():
        raise _not_built(a)
    args.output.mkdir(parents=True, exist_ok=True)
    subs = submissions(a)
    for name, data in subs.items():
        (args.output / f"{name}.ipynb").write_bytes(data)
    print(f"wrote {len(subs)} example submissions for {a.id} to {args.output}/")
    return 0


def register_audit(sub) -> None:
    au = options.command(
        sub,
        "audit",
        audit,
        help="check that the tests of an assignment grade what they should",
        description=(
            "Grade the solution (must score full marks), the blank student notebook (must score "
            "0) and every mutant in solutions/<id>/mutants.yml (must lose points on exactly the "
            "questions it names); report hidden tests that no mutant fails. Exit 1 on a problem."
        ),
    )
    options.assignment_ids(au)
    options.engine(au)
    options.jobs(au, 2)


def register_examples(sub) -> None:
    ex = options.command(
        sub,
        "examples",
        examples,
        help="write example submissions (solution, blank, mutants) to try the grader on",
        description=(
            "Write the built solution, the untouched student notebook and one notebook per "
            "mutant in solutions/<id>/mutants.yml to OUTPUT, named solution.ipynb, blank.ipynb "
            "and mutant-<name>.ipynb. Contains solutions: keep it away from students."
        ),
    )
    options.assignment_id(ex)
    options.output(ex, "folder to write to", required=True)
