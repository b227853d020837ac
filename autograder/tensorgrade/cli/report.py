"""`tensorgrade report`: feedback pages for a graded batch, and the instructor's summary."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import InputError, OutputError
from . import options

DESCRIPTION = (
    "Read RESULTS/<submission>/results.json (written by `tensorgrade grade`) and write one "
    "self-contained HTML feedback page per submission, OUT/<submission>.html, for the student "
    "(score per question, each test's result and message, the student's printed output and "
    "figures), and OUT/index.html, the instructor's summary (score histogram, pass rate of every "
    "test, ungradable, timed-out, crashed and slowest submissions) linking to every page. "
    "Student pages never show hidden tests' code, expected values or failure messages; "
    "index.html names hidden tests and quotes their messages: do not give it to students."
)


def report(args: argparse.Namespace) -> int:
    """Load the results, write the pages; bad input is an error with exit status 2."""
    from tqdm import tqdm

    from ..reports import write_reports
    from ..results import load_results_dir

    out = args.output if args.output is not None else args.results / "reports"
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a folder")
    try:
        results = load_results_dir(args.results)
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(
            f"{_unreadable(args.results)} cannot be read as a result ({e!r})"
        ) from None

    bar = tqdm(total=len(results), desc="reports", unit="page", disable=args.quiet, file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.update(done - bar.n)

    try:
        written = write_reports(results, out, args.before_publication, progress)
    except OSError as e:
        raise OutputError(f"cannot write to {out}: {e}") from None
    finally:
        bar.close()
    hidden = " (hidden tests left out)" if args.before_publication else ""
    print(f"wrote {len(written) - 1} student page(s){hidden} and the summary {written[-1]}")
    return 0


def _unreadable(results_dir: Path) -> str:
    """The first results.json under ``results_dir`` that does not load (for the error message)."""
    from ..results import read_results_json

    for path in sorted(Path(results_dir).glob("*/results.json")):
        try:
            read_results_json(path)
        except (ValueError, KeyError, TypeError, json.JSONDecodeError):
            return str(path)
    return f"a results.json under {results_dir}"


def register(sub) -> None:
    p = options.command(
        sub,
        "report",
        report,
        help="write HTML feedback pages per student and a class summary",
        description=DESCRIPTION,
    )
    options.results(p, "folder `tensorgrade grade` wrote")
    options.output(p, "folder for the pages (default: RESULTS/reports)", metavar="OUT")
    p.add_argument(
        "--before-publication",
        action="store_true",
        help="leave hidden tests out of the student pages (and out of their scores), as "
        "Gradescope hides after_published tests until scores are published",
    )
    options.quiet(p)
