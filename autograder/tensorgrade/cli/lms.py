"""`tensorgrade lms canvas push` and `tensorgrade export`: grades to a learning management system.

Bad input is an ``InputError`` (exit 2); a push or an export that delivers nothing, or not every
graded submission, exits 1; 0 otherwise. Who each result belongs to comes from --roster and from the
results themselves where they were graded from a Canvas or Gradescope download.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .. import settings
from ..errors import InputError, OutputError, TensorgradeError, UsageError
from ..lms.exports import FORMATS, MOODLE_ID_FIELDS
from ..lms.feedback import UNGRADABLE_POLICIES
from . import options

if TYPE_CHECKING:
    from ..lms.canvas import PushReport
    from ..lms.roster import Student
    from ..results import SubmissionResult

TOKEN_ENV = "CANVAS_API_TOKEN"
URL_ENV = "CANVAS_API_URL"


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def _load(results_dir: Path, only: str | None) -> list[SubmissionResult]:
    """The results of one tensorgrade assignment from a results folder."""
    from ..results import load_results_dir

    try:
        results = load_results_dir(results_dir)
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"a results.json under {results_dir} cannot be read: {e!r}") from None
    ids = sorted({r.assignment for r in results})
    if only:
        if only not in ids:
            raise InputError(
                f"no results for assignment {only!r} in {results_dir} (found: {', '.join(ids)})"
            )
        results = [r for r in results if r.assignment == only]
    elif len(ids) > 1:
        raise InputError(
            f"{results_dir} holds results of several assignments ({', '.join(ids)}): "
            "pick one with --results-assignment"
        )
    return results


def _roster(path: Path | None) -> dict[str, Student] | None:
    from ..lms.roster import read_roster

    return None if path is None else read_roster(path)


def _need_someone(what: str, results: list[SubmissionResult], roster) -> None:
    """Bad input when nothing says who any result belongs to: no roster, no identity carried."""
    from ..lms.roster import carried

    if roster is None and not any(carried(r) for r in results):
        raise InputError(
            f"{what} needs --roster (who each submission belongs to): these results carry no "
            "student identity (they were not graded from a Canvas or Gradescope download)"
        )


def _list(what: str, items: list[str], limit: int = 20) -> None:
    if not items:
        return
    shown = ", ".join(items[:limit]) + (
        f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    )
    _warn(f"{len(items)} {what}: {shown}")


# -- export ------------------------------------------------------------------------------------
def export(args: argparse.Namespace) -> int:
    from ..lms.exports import export_csv, export_notes
    from ..results import atomic_write_text

    results = _load(args.results, args.results_assignment)
    roster = _roster(args.roster)
    if args.format != "plain":
        _need_someone(f"--format {args.format}", results, roster)
    kw = dict(moodle_id_field=args.moodle_id, ungradable=args.ungradable)
    text = export_csv(
        args.format,
        results,
        roster,
        assignment_name=args.assignment_name or "",
        assignment_id=args.canvas_assignment_id,
        **kw,
    )
    notes = export_notes(args.format, results, roster, **kw)
    for w in notes.warnings:
        _warn(w)
    who = "no roster row or student identity"
    if args.format == "plain":
        _list(f"submission(s) have {who} (no name in this file)", notes.no_roster_row)
        _list("roster row(s) have no result (listed as 'no result')", notes.no_result)
    else:
        _list(f"submission(s) have {who} and are not in this file", notes.no_roster_row)
        _list("roster row(s) have no result and are not in this file", notes.no_result)
        _list("student(s) named by two submissions are not in this file", notes.conflicts)
    column = MOODLE_ID_FIELDS[args.moodle_id][0] if args.format == "moodle" else "id columns"
    _list(f"student(s) lack {column} and are not in this file", notes.no_identifier)
    _list("ungradable submission(s) left out (--ungradable zero gives 0)", notes.blank_ungradable)
    rows = _student_rows(text, args.format)
    if rows == 0:
        why = {
            "no roster row or identity": len(notes.no_roster_row),
            f"no {column}": len(notes.no_identifier),
            "ungradable, left out": len(notes.blank_ungradable),
            "named by two submissions": len(notes.conflicts),
        }
        reasons = ", ".join(f"{n} {what}" for what, n in why.items() if n)
        raise TensorgradeError(
            f"no student rows to export ({reasons or 'no results'}); nothing written"
            + ("" if args.roster else ": pass --roster to say who each submission belongs to")
        )
    if str(args.output) == "-":
        enc = sys.stdout.encoding or "utf-8"  # what the terminal cannot show becomes "?"
        sys.stdout.write(text.encode(enc, "replace").decode(enc))
        sys.stdout.flush()
    else:
        try:
            atomic_write_text(args.output, text)
        except OSError as e:
            raise OutputError(f"cannot write {args.output}: {e.strerror or e}") from None
        print(f"wrote {args.output} ({args.format} format, {rows} student rows)", file=sys.stderr)
    return 0


def _student_rows(text: str, fmt: str) -> int:
    """Rows of students in an export's text (its header, and Canvas's points row, left out)."""
    rows = [r for r in csv.reader(io.StringIO(text)) if any(c.strip() for c in r)]
    return max(0, len(rows) - (2 if fmt == "canvas" else 1))


# -- canvas push -------------------------------------------------------------------------------
def _token(args: argparse.Namespace) -> str:
    if args.token_file is not None:
        try:
            token = args.token_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise InputError(f"cannot read --token-file {args.token_file}: {e.strerror}") from None
        if not token:
            raise InputError(f"--token-file {args.token_file} is empty")
        return token
    token = settings.canvas_token()
    if not token:
        raise InputError(
            f"no Canvas API token: set {TOKEN_ENV} or pass --token-file FILE "
            "(Canvas: Account > Settings > New Access Token)"
        )
    return token


def push(args: argparse.Namespace) -> int:
    from ..lms.canvas import CanvasSession, RetryPolicy, plan_targets
    from ..lms.canvas import push as push_all
    from ..lms.feedback import max_points
    from ..lms.roster import match

    results = _load(args.results, args.results_assignment)
    roster = _roster(args.roster)
    _need_someone("lms canvas push", results, roster)
    url = args.url or settings.canvas_url()
    if not url:
        raise InputError(f"no Canvas URL: pass --url https://canvas.example.edu or set {URL_ENV}")
    token = _token(args)
    if args.retries < 0:
        raise UsageError("--retries must be 0 or more")
    session = CanvasSession(url, token, RetryPolicy(retries=args.retries))

    m = match(results, roster)
    if args.report_url:
        report_line = f"Full report: {args.report_url}"
    else:
        report_line = "Full report (every public test with its output): ask your instructor."
    targets, skipped = plan_targets(m, args.ungradable, report_line)
    for w in m.notes:
        _warn(w)
    _list(
        "submission(s) have no roster row or student identity and are not pushed",
        [r.submission for r in m.no_roster_row],
    )
    _list("roster row(s) have no result (nothing pushed for them)", [s.label for s in m.no_result])
    _list("student(s) named by two submissions are not pushed", [s.label for _, s in m.conflicts])
    for s in skipped:
        _warn(f"not pushed: {s.label}: {s.why}")
    undelivered = len(m.no_roster_row) + len(m.conflicts) + sum(not s.by_policy for s in skipped)

    verb = "checking" if args.dry_run else "pushing"
    print(f"{verb} {len(targets)} student(s) in Canvas ...", file=sys.stderr)

    def progress(i: int, n: int, o) -> None:
        if not args.dry_run:
            print(f"[{i}/{n}] {o.target.label}: {o.action} ({o.detail})", file=sys.stderr)

    report = push_all(  # a CanvasPushError comes before any student: nothing was written
        session,
        args.course,
        args.assignment,
        targets,
        dry_run=args.dry_run,
        max_score=max_points(results),
        progress=progress,
    )
    _print_report(report, undelivered)
    if report.aborted:
        raise TensorgradeError(f"stopped: {report.aborted}")
    return 0 if report.ok and not undelivered else 1


def _print_report(report: PushReport, undelivered: int) -> None:
    """The plan (dry run) or what happened; who is done and who is not if the push stopped."""
    print(f"Canvas course {report.course}, assignment {report.assignment}")
    for w in report.warnings:
        _warn(w)
    if report.dry_run:
        for o in report.outcomes:
            print(f"  {o.target.label} [{o.target.user_text}]: {o.action}: {o.detail}")
    failed = [o for o in report.outcomes if o.action == "failed"]
    for o in failed:
        print(f"  FAILED {o.target.label} [{o.target.user_text}]: {o.detail}")
    delivered = [o for o in report.outcomes if o.action in ("updated", "unchanged", "would update")]
    if len(failed) > 1 and not delivered and all(o.status in (401, 403) for o in failed):
        _warn(
            "Canvas refused every student: check that the token's user may grade in this "
            "course (a teacher or TA), and that the assignment is assigned to these students"
        )
    if report.aborted:  # the caller then stops with the error
        done = [o.target.label for o in report.outcomes if o.action in ("updated", "unchanged")]
        print(f"done before stopping ({len(done)}): {', '.join(done) or 'none'}")
        todo = [t.label for t in report.not_attempted]
        print(
            f"not done ({len(todo)}): {', '.join(todo)} "
            f"({todo[0]} was in progress and may be written); run the same command again to "
            "finish: students already done are not written twice"
        )
    if report.dry_run:
        print(
            f"dry run, nothing written: {report.count('would update')} student(s) would change, "
            f"{report.count('unchanged')} already up to date"
        )
    else:
        print(
            f"{report.count('updated')} updated, {report.count('unchanged')} already up to date, "
            f"{len(failed)} failed"
            + (f", {undelivered} not pushed (see warnings)" if undelivered else "")
        )


# -- argparse ----------------------------------------------------------------------------------
def _add_common(p: argparse.ArgumentParser) -> None:
    options.results(p, "folder written by `tensorgrade grade`")
    p.add_argument(
        "--results-assignment",
        metavar="ID",
        help="use only the results of this tensorgrade assignment (needed when RESULTS holds several)",
    )
    p.add_argument(
        "--ungradable",
        choices=UNGRADABLE_POLICIES,
        default="blank",
        help="ungradable submissions: blank (default; no grade, so you look at them) or zero",
    )


ROSTER_HELP = (
    "roster CSV: a 'submission' column (folder name under RESULTS) and any of name, email, "
    "canvas_user_id, sis_user_id, login_id, section, moodle_id"
)


def register_lms(subparsers) -> None:
    """`tensorgrade lms canvas push`."""
    lms = options.command(
        subparsers,
        "lms",
        None,
        help="send results to a learning management system (Canvas)",
        description="Send results to a learning management system. For CSV files see `export`.",
    )
    lms_sub = options.subcommands(lms, "lms", "LMS")
    canvas = options.command(lms_sub, "canvas", None, help="Canvas LMS", description="Canvas LMS.")
    p = options.command(
        options.subcommands(canvas, "canvas_command"),
        "push",
        push,
        help="post scores and feedback comments to a Canvas assignment",
        description=(
            "Post each student's score and a feedback comment (total, per-question scores, "
            "failed public tests; never hidden-test details) to a Canvas assignment. Reads each "
            "submission first and writes only what differs, so running it again changes nothing. "
            "Scores are sent as points (prefer_points_over_scheme), never read as a grading "
            "scheme's grade. A student whose write Canvas refuses (401: not assigned, or a "
            "moderated assignment before grades are published) is listed at the end, and the "
            "push goes on. Retries when Canvas throttles (403 'Rate Limit Exceeded', or 429, "
            "honouring Retry-After; slows down when X-Rate-Limit-Remaining runs low) or fails "
            "(5xx). Canvas's posting policy decides when students see the grade. Exit 0 when "
            "every graded submission is in Canvas, 1 when some are not (listed), 2 on bad input."
        ),
        epilog=(
            f"The token comes from ${TOKEN_ENV} or --token-file and is never printed; the URL "
            f"from --url or ${URL_ENV}. Course and assignment ids are the numbers in their "
            "Canvas URLs. Example: tensorgrade lms canvas push results/ --course 1234 "
            "--assignment 5678 --roster roster.csv --dry-run"
        ),
    )
    _add_common(p)
    p.add_argument("--course", type=int, required=True, metavar="ID", help="Canvas course id")
    p.add_argument(
        "--assignment", type=int, required=True, metavar="ID", help="Canvas assignment id"
    )
    p.add_argument(
        "--roster",
        type=Path,
        metavar="CSV",
        help=ROSTER_HELP + " (optional for results graded from a Canvas or Gradescope download)",
    )
    p.add_argument("--url", metavar="URL", help=f"Canvas base URL (default: ${URL_ENV})")
    p.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help=f"file holding the API token (default: ${TOKEN_ENV})",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="read from Canvas and show what would change; write nothing",
    )
    p.add_argument(
        "--report-url",
        metavar="URL",
        help="link to each student's full report for the comment; {submission} is replaced",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=5,
        metavar="N",
        help="retries per request on throttling, 5xx or a dropped connection (default 5)",
    )


def register_export(subparsers) -> None:
    """`tensorgrade export`."""
    e = options.command(
        subparsers,
        "export",
        export,
        help="write grades as CSV for Canvas's or Moodle's grade import, or plain",
        description=(
            "Write the results as CSV. canvas: Canvas's gradebook import (Grades > Import); "
            "moodle: Moodle's CSV grade import (map the identifier, grade and feedback columns "
            "in the import form); plain: every submission and roster row with status, total, "
            "max, per-question scores and reason. Every member of a group gets a row. Students "
            "the file cannot carry are listed on stderr; an export with no student row writes "
            "nothing and exits 1."
        ),
    )
    _add_common(e)
    e.add_argument("--format", choices=FORMATS, required=True, help="canvas, moodle or plain")
    e.add_argument(
        "--roster",
        type=Path,
        metavar="CSV",
        help=ROSTER_HELP + " (canvas, moodle: required unless the results were graded from a "
        "Canvas or Gradescope download, which says who each submission belongs to)",
    )
    options.output(e, "default: stdout", default=Path("-"), metavar="FILE")
    e.add_argument(
        "--assignment-name",
        metavar="NAME",
        help="the assignment's name in the LMS (default: the tensorgrade assignment id)",
    )
    e.add_argument(
        "--canvas-assignment-id",
        type=int,
        metavar="ID",
        help="canvas: the Canvas assignment id, so the column is 'NAME (ID)' and matches exactly",
    )
    e.add_argument(
        "--moodle-id",
        choices=list(MOODLE_ID_FIELDS),
        default="email",
        help="moodle: identify students by email (default; roster 'email'), username "
        "('login_id'), idnumber ('sis_user_id') or id ('moodle_id')",
    )
