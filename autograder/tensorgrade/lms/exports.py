"""CSV exports of a results folder: Canvas gradebook import, Moodle grade import, and plain.

Pure functions: results + roster in, CSV text out. Who a result belongs to comes from the roster
and from the result itself where it was graded from an LMS's download (``roster.match``; every
member of a Gradescope group gets a row). What a format cannot carry (a submission with no
student, a roster row with no result, an ungradable submission left out) is listed by
`export_notes`, for the caller to report.

Canvas (Grades > Import): header ``Student,ID,SIS User ID,SIS Login ID,Section,<name> (<id>)``,
then Canvas's own ``Points Possible`` row; Canvas matches a row by ID, then SIS User ID, then SIS
Login ID, then name. A row without a grade is left out: Canvas's importer does not promise to
leave a grade alone for an empty cell (it may clear it), and a missing row changes nothing.

Moodle (Grade administration > Import > CSV file): one identifier column (mapped in the import
form to email address, username, ID number or user id), the grade column and a feedback column.
Moodle aborts the whole import on a row whose user it cannot find and clears a grade on an empty
cell, so rows without an identifier or a grade are left out (and reported).

Plain: every result and every roster row, with status, total, max, per-question scores and the
reason; numbers with 6 decimals so that reading it back gives the same scores.

Every text cell of every format goes through ``safetext.sheet_text``: file names and reasons come
from students, and a cell starting with = + - @ (or a tab or carriage return) would run as a
formula in a spreadsheet, so it gets a leading ``'``. Scores are passed as numbers and stay
numbers.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from ..results import SubmissionResult
from ..safetext import sheet_row
from .feedback import grade_for, max_points, one_line, points
from .roster import Student, match

FORMATS = ("canvas", "moodle", "plain")
# Moodle's user fields an import can be matched on -> (roster column, header we write).
MOODLE_ID_FIELDS = {
    "email": ("email", "Email address"),
    "username": ("login_id", "Username"),
    "idnumber": ("sis_user_id", "ID number"),
    "id": ("moodle_id", "User ID"),
}
PLAIN_PLACES = 6


@dataclass
class ExportNotes:
    """What the export left out or left blank, by submission/roster label."""

    no_roster_row: list[str] = field(default_factory=list)
    no_result: list[str] = field(default_factory=list)
    no_identifier: list[str] = field(default_factory=list)
    blank_ungradable: list[str] = field(default_factory=list)  # left out (no grade to give)
    conflicts: list[str] = field(default_factory=list)  # one person named by two submissions
    warnings: list[str] = field(default_factory=list)  # the matching's own notes


class _Writer:
    """A CSV writer whose rows are made safe (``sheet_row``): numbers written with ``places``
    decimals (see ``points``), every other cell as neutralised text."""

    def __init__(self, buf: io.StringIO, places: int) -> None:
        self._w = csv.writer(buf, lineterminator="\r\n")  # RFC 4180; Excel, Canvas, Moodle
        self._places = places

    def writerow(self, cells: list) -> None:
        self._w.writerow(sheet_row(cells, lambda x: points(x, self._places)))


def _writer(buf: io.StringIO, places: int = 2) -> _Writer:
    return _Writer(buf, places)


def canvas_column(assignment_name: str, assignment_id: int | None) -> str:
    return f"{assignment_name} ({assignment_id})" if assignment_id is not None else assignment_name


def canvas_csv(
    results: list[SubmissionResult],
    roster: dict[str, Student] | None,
    assignment_name: str,
    assignment_id: int | None = None,
    ungradable: str = "blank",
) -> str:
    """Canvas gradebook import: one row per student with a grade (ungradable ones left out
    unless ``ungradable="zero"``)."""
    buf = io.StringIO()
    w = _writer(buf)
    w.writerow(
        ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]
        + [canvas_column(assignment_name, assignment_id)]
    )
    mx = max_points(results)
    w.writerow(["    Points Possible", "", "", "", "", mx if mx is not None else ""])
    for r, st in match(results, roster).pairs:
        g = grade_for(r, ungradable)
        if not _canvas_identifiable(st) or g is None:
            continue
        w.writerow([st.name, st.canvas_user_id, st.sis_user_id, st.login_id, st.section, g])
    return buf.getvalue()


def moodle_csv(
    results: list[SubmissionResult],
    roster: dict[str, Student] | None,
    assignment_name: str,
    id_field: str = "email",
    ungradable: str = "blank",
) -> str:
    """Moodle CSV grade import: identifier, full name, grade, feedback."""
    if id_field not in MOODLE_ID_FIELDS:
        raise ValueError(f"id_field must be one of {', '.join(MOODLE_ID_FIELDS)}")
    column, header = MOODLE_ID_FIELDS[id_field]
    buf = io.StringIO()
    w = _writer(buf, 5)
    w.writerow([header, "Full name", assignment_name, f"{assignment_name} feedback"])
    for r, st in match(results, roster).pairs:
        g = grade_for(r, ungradable)
        ident = getattr(st, column)
        if g is None or not ident:
            continue
        w.writerow([ident, st.name, g, one_line(r)])
    return buf.getvalue()


def plain_csv(results: list[SubmissionResult], roster: dict[str, Student] | None = None) -> str:
    """Everything, one row per submission and per roster row without a result."""
    roster = roster or {}
    questions = list(dict.fromkeys(q for r in results for q in r.question_scores()))
    buf = io.StringIO()
    w = _writer(buf, PLAIN_PLACES)
    w.writerow(
        ["submission", "name", "email", "sis_user_id", "assignment", "status", "score", "max_score"]
        + questions
        + ["reason"]
    )
    m = match(results, roster)
    # a group's members get a row each; a person two submissions name is listed under both
    rows = [*m.pairs, *m.conflicts] + [(r, None) for r in m.no_roster_row]
    for r, st in sorted(rows, key=lambda p: p[0].submission):
        qs = r.question_scores()
        w.writerow(
            [
                r.submission,
                st.name if st else "",
                st.email if st else "",
                st.sis_user_id if st else "",
                r.assignment,
                r.status,
                r.score,
                r.max_score,
            ]
            + [qs[q][0] if q in qs else "" for q in questions]
            + [" ".join(r.reason.split())]
        )
    for st in m.no_result:
        w.writerow(
            [st.submission, st.name, st.email, st.sis_user_id, "", "no result", "", ""]
            + [""] * len(questions)
            + ["no results.json for this roster row"]
        )
    return buf.getvalue()


def export_csv(
    fmt: str,
    results: list[SubmissionResult],
    roster: dict[str, Student] | None,
    *,
    assignment_name: str = "",
    assignment_id: int | None = None,
    moodle_id_field: str = "email",
    ungradable: str = "blank",
) -> str:
    """Dispatch on ``fmt`` (one of FORMATS); canvas and moodle need a roster, or results that
    carry their students (graded from an LMS's download)."""
    if fmt == "plain":
        return plain_csv(results, roster)
    name = assignment_name or _assignment_of(results)
    if fmt == "canvas":
        return canvas_csv(results, roster, name, assignment_id, ungradable)
    if fmt == "moodle":
        return moodle_csv(results, roster, name, moodle_id_field, ungradable)
    raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")


def export_notes(
    fmt: str,
    results: list[SubmissionResult],
    roster: dict[str, Student] | None,
    *,
    moodle_id_field: str = "email",
    ungradable: str = "blank",
) -> ExportNotes:
    """What `export_csv` with the same arguments leaves out or leaves blank."""
    notes = ExportNotes()
    m = match(results, roster)
    if roster is None and not m.pairs and not m.conflicts and fmt == "plain":
        return notes  # a plain export without a roster names no one, and says nothing
    notes.no_roster_row = [r.submission for r in m.no_roster_row]
    notes.no_result = [st.label for st in m.no_result]
    notes.conflicts = [st.label for _, st in m.conflicts]
    notes.warnings = list(m.notes)
    if fmt == "plain":
        return notes  # plain keeps both kinds, as rows
    column = MOODLE_ID_FIELDS[moodle_id_field][0]
    for r, st in m.pairs:
        identified = bool(getattr(st, column)) if fmt == "moodle" else _canvas_identifiable(st)
        if not identified:
            notes.no_identifier.append(st.label)
        elif grade_for(r, ungradable) is None:
            notes.blank_ungradable.append(f"{st.label}: {' '.join(r.reason.split())[:120]}")
    return notes


def _canvas_identifiable(st: Student) -> bool:
    return bool(st.canvas_user_id or st.sis_user_id or st.login_id or st.name)


def _assignment_of(results: list[SubmissionResult]) -> str:
    ids = sorted({r.assignment for r in results})
    return ids[0] if len(ids) == 1 else "tensorgrade"
