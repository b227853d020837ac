"""The roster: which student each submission folder belongs to.

A CSV with a required ``submission`` column (the folder name under RESULTS) and optional identity
columns for the LMSs. Reading is strict: a roster that maps two submissions to one Canvas user, or
one submission to two students, would post grades to the wrong person, so it is refused with the
line numbers to fix.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from ..results import SubmissionResult

# Known columns. Header cells are matched case-insensitively, with spaces and dashes as "_".
COLUMNS = (
    "submission",
    "name",  # as the LMS shows it; Canvas's CSV import also matches "Last, First"
    "email",
    "canvas_user_id",  # Canvas's numeric user id
    "sis_user_id",  # the institution's student id (Canvas SIS User ID, Moodle "ID number")
    "login_id",  # Canvas SIS Login ID, Moodle username
    "section",
    "moodle_id",  # Moodle's numeric user id
)
# Columns whose values must be unique among the rows that have one.
UNIQUE = ("submission", "email", "canvas_user_id", "sis_user_id", "login_id", "moodle_id")
NUMERIC = ("canvas_user_id", "moodle_id")


class RosterError(ValueError):
    """The roster cannot be used as it is; the message names the lines to fix."""


@dataclass(frozen=True)
class Student:
    submission: str
    line: int  # line of the roster file, for messages
    name: str = ""
    email: str = ""
    canvas_user_id: str = ""
    sis_user_id: str = ""
    login_id: str = ""
    section: str = ""
    moodle_id: str = ""
    extra: dict = field(default_factory=dict, compare=False)  # unknown columns, kept as-is

    @property
    def label(self) -> str:
        """How to name this student in messages."""
        return f"{self.submission} ({self.name})" if self.name else self.submission


@dataclass
class Matched:
    """Results paired with roster rows, plus both kinds of leftovers (never dropped silently)."""

    pairs: list[tuple[SubmissionResult, Student]]
    no_roster_row: list[SubmissionResult]  # results whose submission the roster does not list
    no_result: list[Student]  # roster rows with no results.json


def _normalise(header: str) -> str:
    return header.strip().lower().replace(" ", "_").replace("-", "_")


def parse_roster(text: str, source: str = "roster") -> dict[str, Student]:
    """Parse roster CSV text into ``submission -> Student``; raise RosterError on any problem."""
    text = text.removeprefix("\ufeff")  # Excel's byte-order mark
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    while header is not None and not any(c.strip() for c in header):
        header = next(reader, None)  # leading blank lines
    if header is None:
        raise RosterError(
            f"{source}: empty file; expected a header line with a 'submission' column"
        )
    header_line = reader.line_num
    names = [_normalise(h) for h in header]
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if n and n in seen:
            raise RosterError(
                f"{source}:{header_line}: column '{header[i].strip()}' appears twice "
                f"(columns {seen[n] + 1} and {i + 1})"
            )
        seen[n] = i
    if "submission" not in seen:
        raise RosterError(
            f"{source}:{header_line}: no 'submission' column (the folder name under RESULTS); "
            f"found: {', '.join(h.strip() for h in header) or 'nothing'}"
        )

    students: dict[str, Student] = {}
    first_line: dict[tuple[str, str], int] = {}
    for row in reader:
        line = reader.line_num
        if not any(c.strip() for c in row):
            continue
        if len(row) > len(names):
            raise RosterError(
                f"{source}:{line}: {len(row)} fields but the header has {len(names)} "
                '(an unquoted comma in a name? quote it: "Doe, Jane")'
            )
        values = {n: row[i].strip() if i < len(row) else "" for i, n in enumerate(names) if n}
        if not values["submission"]:
            raise RosterError(f"{source}:{line}: empty 'submission'")
        for col in NUMERIC:
            v = values.get(col, "")
            if v and not v.isdigit():
                raise RosterError(f"{source}:{line}: {col} must be a number, got {v!r}")
        for col in UNIQUE:
            v = values.get(col, "")
            key = (col, v.lower() if col == "email" else v)
            if not v:
                continue
            if key in first_line:
                raise RosterError(
                    f"{source}:{line}: duplicate {col} {v!r} (already on line {first_line[key]})"
                )
            first_line[key] = line
        known = {c: values.get(c, "") for c in COLUMNS}
        extra = {k: v for k, v in values.items() if k not in COLUMNS}
        students[known["submission"]] = Student(line=line, extra=extra, **known)
    return students


def read_roster(path: Path) -> dict[str, Student]:
    """Read a roster file (UTF-8, optionally with a byte-order mark)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RosterError(f"no roster file at {path}") from None
    except UnicodeDecodeError as e:
        raise RosterError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return parse_roster(text, source=str(path))


def match(results: list[SubmissionResult], roster: dict[str, Student]) -> Matched:
    """Pair each result with its roster row; report both kinds of leftovers."""
    by_sub = {r.submission: r for r in results}
    pairs = [(by_sub[s], roster[s]) for s in sorted(by_sub) if s in roster]
    no_row = [by_sub[s] for s in sorted(by_sub) if s not in roster]
    no_result = sorted((st for s, st in roster.items() if s not in by_sub), key=lambda s: s.line)
    return Matched(pairs, no_row, no_result)
