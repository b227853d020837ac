"""The roster: which student each submission folder belongs to.

A CSV with a required ``submission`` column (the folder name under RESULTS) and optional identity
columns for the LMSs. Reading is strict: a roster that maps two submissions to one Canvas user, or
one submission to two students, would post grades to the wrong person, so it is refused with the
line numbers to fix.

A result graded from an LMS's download carries its students itself (``SubmissionResult.lms``,
see ``lms/downloads.py``): a Canvas user id, or a Gradescope submission's members. ``match``
uses them where the roster has no row for the submission, so no hand-written roster is needed;
with a roster, a row is also found by these identities (a roster keyed by Canvas user id, not by
folder name, still matches) and fills in what the download did not say (SIS id, section).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import InputError
from ..results import SubmissionResult
from ..safetext import clean_text

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
# Columns that identify one person, in the order a roster row is looked up by them.
IDENTITY = ("canvas_user_id", "sis_user_id", "login_id", "email", "moodle_id")


class RosterError(InputError, ValueError):
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
    """Results paired with students (one pair per member of a group), plus every leftover
    (never dropped silently)."""

    pairs: list[tuple[SubmissionResult, Student]]
    no_roster_row: list[SubmissionResult]  # no roster row, and no identity from a download
    no_result: list[Student]  # roster rows with no results.json
    # one person named by two submissions: neither is delivered (it would overwrite the other)
    conflicts: list[tuple[SubmissionResult, Student]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # for the caller to print as warnings


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


def carried(result: SubmissionResult) -> list[Student]:
    """The students a result names itself (``lms["members"]``, from the download it was graded
    from), as roster rows of its submission (line 0); [] for a result graded from a plain file."""
    lms = result.lms if isinstance(result.lms, dict) else {}
    members = lms.get("members")
    out = []
    for m in members if isinstance(members, list) else []:
        if not isinstance(m, dict):
            continue
        values = {c: _cell(m.get(c)) for c in COLUMNS if c != "submission"}
        for c in NUMERIC:
            if not values[c].isdigit():
                values[c] = ""
        if values["name"] or any(values[c] for c in IDENTITY):
            out.append(Student(result.submission, 0, **values))  # type: ignore[arg-type]
    return out


def _cell(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return ""
    return " ".join(clean_text(str(value)).split())


def _ids(st: Student) -> list[tuple[str, str]]:
    """(column, value) of each identity ``st`` has; e-mail addresses compared without case."""
    out = []
    for c in IDENTITY:
        v = getattr(st, c)
        if v:
            out.append((c, v.casefold() if c == "email" else v))
    return out


def _merged(row: Student, member: Student, submission: str) -> Student:
    """A roster row found by a member's identity: the row's values, the member's where the row
    has none, under the result's submission (the row may be keyed otherwise)."""
    filled = {c: getattr(row, c) or getattr(member, c) for c in COLUMNS if c != "submission"}
    return replace(row, submission=submission, **filled)


def match(results: list[SubmissionResult], roster: dict[str, Student] | None = None) -> Matched:
    """Pair each result with its students; report every leftover.

    A roster row for the result's submission wins (it overrides what the download said, for
    every member). Otherwise each member the result carries is a student, completed by the
    roster row that has one of its identities (Canvas user id, SIS id, login, e-mail, Moodle
    id), if any. A person that two submissions name is in ``conflicts``, for neither.
    """
    roster = roster or {}
    index: dict[tuple[str, str], Student] = {}
    for st in roster.values():
        for k in _ids(st):
            index.setdefault(k, st)
    pairs: list[tuple[SubmissionResult, Student]] = []
    no_row, notes, used = [], [], set()
    for r in sorted(results, key=lambda r: r.submission):
        members = carried(r)
        row = roster.get(r.submission)
        if row is not None:
            used.add(row.submission)
            pairs.append((r, row))
            others = [m for m in members if not set(_ids(m)) & set(_ids(row))]
            if others:
                notes.append(
                    f"{r.submission}: roster line {row.line} is used, not what the download "
                    f"named ({', '.join(_who(m) for m in others)})"
                )
            continue
        if not members:
            no_row.append(r)
        for m in members:
            found = next((index[k] for k in _ids(m) if k in index), None)
            if found is not None:
                used.add(found.submission)
                m = _merged(found, m, r.submission)
            pairs.append((r, m))
    pairs, conflicts = _without_conflicts(pairs, notes)
    no_result = sorted((st for s, st in roster.items() if s not in used), key=lambda s: s.line)
    return Matched(pairs, no_row, no_result, conflicts, notes)


def _who(st: Student) -> str:
    ids = ", ".join(f"{c} {v}" for c, v in _ids(st)[:2])
    return f"{st.name} ({ids})" if st.name and ids else st.name or ids


def _without_conflicts(
    pairs: list[tuple[SubmissionResult, Student]], notes: list[str]
) -> tuple[list[tuple[SubmissionResult, Student]], list[tuple[SubmissionResult, Student]]]:
    """Pairs whose person no other submission names, and those a person of two submissions."""
    owners: dict[tuple[str, str], set[str]] = {}
    for r, st in pairs:
        for k in _ids(st):
            owners.setdefault(k, set()).add(r.submission)
    clashes = {k: subs for k, subs in owners.items() if len(subs) > 1}
    for (c, v), subs in sorted(clashes.items()):
        notes.append(
            f"{c} {v} is named by {len(subs)} submissions ({', '.join(sorted(subs))}): none of "
            "them is delivered to this person; grade one of them, or fix the roster"
        )
    keep = [(r, st) for r, st in pairs if not any(k in clashes for k in _ids(st))]
    dropped = [(r, st) for r, st in pairs if any(k in clashes for k in _ids(st))]
    return keep, dropped
