"""LMS-shaped intake: Canvas's "Download Submissions" (file names, the zip itself), Gradescope's
export (``submission_metadata.yml``), and the identities they carry through grading to exports
and the Canvas push, with no hand-written roster."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import zipfile
from pathlib import Path

import pytest
from fake_canvas import FakeCanvas  # tests/ is on sys.path (pytest's rootdir conftest)

import tensorgrade.lms.canvas as canvas_mod
from tensorgrade import otter_engine, submissions
from tensorgrade.cli import main
from tensorgrade.course import Assignment
from tensorgrade.lms.downloads import (
    gradescope_key,
    parse_canvas_name,
    parse_gradescope_metadata,
)
from tensorgrade.lms.exports import canvas_csv, moodle_csv, plain_csv
from tensorgrade.lms.roster import match, parse_roster
from tensorgrade.results import (
    SubmissionResult,
    TestResult,
    load_results_dir,
    read_results_json,
    write_results_json,
)
from tensorgrade.submissions import (
    REFUSAL_SUFFIX,
    IntakeError,
    Ungradable,
    collect,
    notebook_bytes,
    parse_notebook,
    read_bytes,
    read_intake,
)
from tensorgrade.zips import write_zip

NOTEBOOK = json.dumps(
    {
        "cells": [{"cell_type": "code", "source": "x = 1", "metadata": {}, "outputs": [],
                   "execution_count": None, "id": "c1"}],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
).encode()  # fmt: skip

# A Canvas "Download Submissions" of 01_tensors, as Canvas names its files: Jane Doe resubmitted
# late (Canvas appended "-1"), Bob Smith uploaded a zip, Ann Lee's file has a name of its own.
CANVAS_FILES = [
    "doejane_12345_501_01_tensors.ipynb",
    "doejane_LATE_12345_678_01_tensors-1.ipynb",
    "smithbob_23456_602_my_work.zip",
    "leeann_34567_603_01_tensors.ipynb",
]

# A Gradescope export's metadata, as Gradescope writes it (Ruby symbols as keys, a Ruby tag on a
# score, a group of two, a submission without a notebook, a record without a folder).
GRADESCOPE_YML = """---
submission_249001:
  :submitters:
  - :name: Ada Lovelace
    :sid: '2001'
    :email: ada@uni.edu
  :created_at: 2024-02-01 12:34:56.789012000 -08:00
  :score: !ruby/object:BigDecimal 18:0.8E1
  :status: processed
  :results:
    score: 8.0
    tests: []
  :history: []
submission_249002:
  :submitters:
  - :name: Pair One
    :sid: '2002'
    :email: one@uni.edu
  - :name: Pair Two
    :sid: '2003'
    :email: two@uni.edu
  :created_at: 2024-02-01 13:00:00.000000000 -08:00
  :score: 6.0
  :status: processed
  :history:
  - :id: 248999
    :created_at: 2024-02-01 11:00:00.000000000 -08:00
    :score: 2.0
submission_249003:
  :submitters:
  - :name: Pdf Only
    :sid: '2004'
    :email: pdf@uni.edu
  :created_at: 2024-02-01 14:00:00.000000000 -08:00
  :score: 0.0
submission_249004:
  :submitters:
  - :name: Gone Away
    :sid: '2005'
"""


def _student_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("work/01_tensors.ipynb", NOTEBOOK)
    return buf.getvalue()


def _canvas_zip(path: Path, extra: dict[str, bytes] | None = None) -> Path:
    members = {n: (_student_zip() if n.endswith(".zip") else NOTEBOOK) for n in CANVAS_FILES}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in {**members, **(extra or {})}.items():
            z.writestr(name, data)
    return path


def _gradescope_folder(root: Path) -> Path:
    export = root / "assignment_77_export"
    for sub in ("submission_249001", "submission_249002", "submission_249003"):
        (export / sub).mkdir(parents=True)
    (export / "submission_249001" / "01_tensors.ipynb").write_bytes(NOTEBOOK)
    (export / "submission_249002" / "01_tensors.ipynb").write_bytes(NOTEBOOK)
    (export / "submission_249002" / ".DS_Store").write_bytes(b"\0")
    (export / "submission_249003" / "01_tensors.pdf").write_bytes(b"%PDF-1.4")
    (export / "submission_metadata.yml").write_text(GRADESCOPE_YML)
    return export


def _by_key(subs):
    return {s.key: s for s in subs}


# -- Canvas file names ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, expected",
    [
        (
            "doejane_LATE_12345_678_01_tensors-1.ipynb",
            ("doejane", "12345", "", True, 678, "01_tensors-1.ipynb", 1, "doejane_12345"),
        ),
        (
            "doejane_12345_501_01_tensors.ipynb",
            ("doejane", "12345", "", False, 501, "01_tensors.ipynb", 0, "doejane_12345"),
        ),
        (  # an underscore in the name (Canvas keeps them), a file name with underscores
            "o_brien_mary_77_88_hw_1_final.ipynb",
            ("o_brien_mary", "77", "", False, 88, "hw_1_final.ipynb", 0, "o_brien_mary_77"),
        ),
        (  # anonymous grading: no name, no user id
            "LATE_anon_x7Kq2_904_01_tensors-3.ipynb",
            ("", "", "x7Kq2", True, 904, "01_tensors-3.ipynb", 3, "anon_x7Kq2"),
        ),
        ("_555_66_a.ipynb", ("", "555", "", False, 66, "a.ipynb", 0, "canvas_555")),
    ],
)
def test_canvas_names_are_parsed(name, expected):
    c = parse_canvas_name(name)
    assert c is not None
    got = (c.name, c.user_id, c.anonymous_id, c.late, c.file_id, c.file, c.resubmission, c.key)
    assert got == expected


@pytest.mark.parametrize(
    "name",
    [
        "01_tensors.ipynb",
        "ada.ipynb",
        "Doe_12345_678_x.ipynb",  # Canvas lower-cases the name
        "hw_01_2_x.ipynb",  # ids never start with 0
        "doejane_12345_x.ipynb",  # no file id
        "doejane_late_12345_678_x.ipynb".upper(),
    ],
)
def test_other_names_are_not_canvas_names(name):
    assert parse_canvas_name(name) is None


def test_a_canvas_folder_gives_one_submission_per_student_the_latest_graded(tmp_path):
    for name in CANVAS_FILES:
        (tmp_path / name).write_bytes(_student_zip() if name.endswith(".zip") else NOTEBOOK)
    (tmp_path / "ada.ipynb").write_bytes(NOTEBOOK)  # a plain file among them keeps its stem
    intake = read_intake([tmp_path])
    subs = _by_key(intake.submissions)
    assert sorted(subs) == ["ada", "doejane_12345", "leeann_34567", "smithbob_23456"]
    jane = subs["doejane_12345"]
    assert jane.path.name == "doejane_LATE_12345_678_01_tensors-1.ipynb"
    assert jane.lms == {
        "source": "canvas",
        "canvas_user_id": "12345",
        "name": "doejane",
        "late": True,
        "file": "01_tensors-1.ipynb",
        "canvas_file_id": 678,
        "resubmission": 1,
        "members": [{"name": "doejane", "canvas_user_id": "12345"}],
        "earlier": ["doejane_12345_501_01_tensors.ipynb"],
    }
    assert subs["smithbob_23456"].path.suffix == ".zip"
    assert subs["ada"].lms == {}
    assert (
        "doejane_12345: graded doejane_LATE_12345_678_01_tensors-1.ipynb; earlier, not graded: "
        "doejane_12345_501_01_tensors.ipynb" in intake.notes
    )
    # the same files again, in another order or twice: the same keys
    again = read_intake([tmp_path / CANVAS_FILES[1], tmp_path, tmp_path / CANVAS_FILES[0]])
    assert {s.key: s.path for s in again.submissions} == {k: s.path for k, s in subs.items()}


def test_the_latest_upload_wins_by_file_id_not_by_name(tmp_path):
    (tmp_path / "doejane_12345_900_01_tensors.ipynb").write_bytes(NOTEBOOK)  # uploaded last
    (tmp_path / "doejane_12345_800_01_tensors-2.ipynb").write_bytes(NOTEBOOK)
    (sub,) = collect([tmp_path])
    assert sub.path.name == "doejane_12345_900_01_tensors.ipynb"
    assert sub.lms["earlier"] == ["doejane_12345_800_01_tensors-2.ipynb"]


def test_the_downloaded_zip_is_a_class_not_a_student(tmp_path):
    zip_path = _canvas_zip(tmp_path / "submissions.zip")
    intake = read_intake([zip_path])
    subs = _by_key(intake.submissions)
    assert sorted(subs) == ["doejane_12345", "leeann_34567", "smithbob_23456"]
    assert "submissions" not in subs
    assert "submissions.zip: a Canvas download, 4 file(s) of 3 student(s)" in intake.notes
    jane = subs["doejane_12345"]
    assert jane.path.name == "doejane_LATE_12345_678_01_tensors-1.ipynb"
    assert jane.path.read_bytes() == NOTEBOOK and not jane.path.is_relative_to(tmp_path)
    assert stat_mode(jane.path) == 0o600 and stat_mode(jane.path.parent) == 0o700
    assert jane.lms["late"] is True and jane.lms["earlier"]
    # Bob's own zip is expanded as a file, then graded as any student's zip: its one notebook
    bob = subs["smithbob_23456"]
    assert parse_notebook(notebook_bytes(read_bytes(bob.path), bob.path), "x")["nbformat"] == 4


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_an_unpacked_download_one_folder_down_is_a_class_too(tmp_path):
    folder = tmp_path / "downloads" / "submissions"
    folder.mkdir(parents=True)
    for name in CANVAS_FILES[:2] + CANVAS_FILES[3:]:
        (folder / name).write_bytes(NOTEBOOK)
    (tmp_path / "downloads" / "bob").mkdir()  # a student's folder next to it stays a student
    (tmp_path / "downloads" / "bob" / "hw_2024_1_tensors.ipynb").write_bytes(NOTEBOOK)
    subs = _by_key(collect([tmp_path / "downloads"]))
    assert sorted(subs) == ["bob", "doejane_12345", "leeann_34567"]
    assert subs["bob"].lms == {}  # one student's own file name is not read as Canvas's


def test_a_members_problem_is_that_students_result_and_the_class_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(submissions, "MAX_NOTEBOOK_BYTES", 4000)
    big = b'{"cells": [], "x": "' + b"a" * 5000 + b'"}'
    zip_path = _canvas_zip(
        tmp_path / "submissions.zip", {"bigbert_45678_700_01_tensors.ipynb": big}
    )
    subs = _by_key(collect([zip_path]))
    bert = subs["bigbert_45678"]
    assert bert.path.name.endswith(REFUSAL_SUFFIX) and bert.lms["canvas_user_id"] == "45678"
    with pytest.raises(Ungradable, match=r"01_tensors.ipynb is 0.0 MiB, over the 0 MiB limit"):
        notebook_bytes(read_bytes(bert.path), bert.path)
    assert subs["leeann_34567"].path.read_bytes() == NOTEBOOK


def test_a_refusal_file_is_only_trusted_from_the_intake(tmp_path):
    fake = tmp_path / f"ada.ipynb{REFUSAL_SUFFIX}"
    fake.write_bytes(b"just some text")
    assert notebook_bytes(fake.read_bytes(), fake) == b"just some text"  # not a refusal: parsed


def test_a_zip_that_is_not_a_clean_canvas_download_is_one_submission(tmp_path):
    # a path that leaves its folder, or a member not named by Canvas: the zip guard decides
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as z:
        z.writestr("../doejane_12345_501_01_tensors.ipynb", NOTEBOOK)
        z.writestr("leeann_34567_603_01_tensors.ipynb", NOTEBOOK)
    with zipfile.ZipFile(tmp_path / "mixed.zip", "w") as z:
        z.writestr("doejane_12345_501_01_tensors.ipynb", NOTEBOOK)
        z.writestr("notes.ipynb", NOTEBOOK)
    subs = _by_key(collect([tmp_path]))
    assert sorted(subs) == ["evil", "mixed"]
    with pytest.raises(Ungradable, match="unsafe path"):
        notebook_bytes(read_bytes(subs["evil"].path), subs["evil"].path)
    with pytest.raises(Ungradable, match="contains 2 notebooks"):
        notebook_bytes(read_bytes(subs["mixed"].path), subs["mixed"].path)


def test_a_damaged_or_oversized_download_stops_the_intake_with_a_reason(tmp_path, monkeypatch):
    zip_path = _canvas_zip(tmp_path / "submissions.zip")
    data = bytearray(zip_path.read_bytes())
    with zipfile.ZipFile(zip_path) as z:
        info = z.getinfo(CANVAS_FILES[0])
    # flip a byte of the first member's compressed data: its CRC no longer matches
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + 5] ^= 0xFF
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(bytes(data))
    with pytest.raises(IntakeError, match="damaged.zip is a Canvas download that could not be"):
        read_intake([damaged])
    monkeypatch.setattr(submissions, "MAX_EXPANDED_BYTES", 1000)
    with pytest.raises(IntakeError, match="would expand to .* unpack it and pass the folder"):
        read_intake([zip_path])


def test_expanded_files_are_shared_with_the_judge_only(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("changing a file's group needs root")
    import grp
    import pwd

    user = "nobody"
    gid = pwd.getpwnam(user).pw_gid
    (sub, *_) = read_intake([_canvas_zip(tmp_path / "s.zip")], share_with=user).submissions
    for p in (sub.path, sub.path.parent, sub.path.parent.parent):
        assert p.stat().st_gid == gid, grp.getgrgid(p.stat().st_gid)
        assert stat_mode(p) & 0o007 == 0  # nobody else
    assert stat_mode(sub.path) == 0o640


# -- Gradescope ----------------------------------------------------------------------------------
def test_gradescope_metadata_is_read_as_gradescope_writes_it():
    records = parse_gradescope_metadata(GRADESCOPE_YML)
    assert records["submission_249002"]["members"] == [
        {"name": "Pair One", "sis_user_id": "2002", "email": "one@uni.edu"},
        {"name": "Pair Two", "sis_user_id": "2003", "email": "two@uni.edu"},
    ]
    assert records["submission_249001"]["id"] == "249001"
    assert records["submission_249004"]["members"] == [{"name": "Gone Away", "sis_user_id": "2005"}]
    assert gradescope_key(records["submission_249002"]["members"], "x") == "2002_2003"
    assert gradescope_key([{"email": "ada@uni.edu"}], "x") == "ada"
    assert gradescope_key([], "submission_9") == "submission_9"
    # the same fields without the colons, as some tools rewrite the file, and unknown tags
    plain = parse_gradescope_metadata(
        "submission_1:\n  submitters:\n  - {name: A, sid: 7}\n  score: !ruby/object:Foo {a: 1}\n"
    )
    assert plain["submission_1"]["members"] == [{"name": "A", "sis_user_id": "7"}]


@pytest.mark.parametrize(
    "text", ["a: [unclosed", "- just\n- a list\n", "!!python/object:os.system {}"]
)
def test_unreadable_gradescope_metadata_stops_the_intake(tmp_path, text):
    export = _gradescope_folder(tmp_path)
    (export / "submission_metadata.yml").write_text(text)
    with pytest.raises(IntakeError, match="export the submissions from Gradescope again"):
        read_intake([export])


def test_a_gradescope_export_folder_gives_keys_names_and_group_members(tmp_path):
    export = _gradescope_folder(tmp_path)
    (export / "submission_999").mkdir()  # not in the metadata
    (export / "submission_999" / "x.ipynb").write_bytes(NOTEBOOK)
    intake = read_intake([tmp_path])  # the export's parent folder: found inside it
    subs = _by_key(intake.submissions)
    assert sorted(subs) == ["2001", "2002_2003", "2004", "submission_999"]
    group = subs["2002_2003"]
    assert group.path == export / "submission_249002" / "01_tensors.ipynb"
    assert group.lms == {
        "source": "gradescope",
        "gradescope_submission_id": "249002",
        "folder": "submission_249002",
        "created_at": "2024-02-01 13:00:00-08:00",
        "members": [
            {"name": "Pair One", "sis_user_id": "2002", "email": "one@uni.edu"},
            {"name": "Pair Two", "sis_user_id": "2003", "email": "two@uni.edu"},
        ],
    }
    pdf = subs["2004"]  # no notebook: ungradable, with what to upload
    with pytest.raises(Ungradable, match=r"No notebook \(.ipynb\) was found .*01_tensors.pdf"):
        notebook_bytes(read_bytes(pdf.path), pdf.path)
    assert subs["submission_999"].lms == {}
    notes = "\n".join(intake.notes)
    assert "a Gradescope export, 3 submission(s) of 4 student(s)" in notes
    assert "submission_249004 (Gone Away) is in submission_metadata.yml but has no folder" in notes
    assert "submission_249002 is a group (Pair One, Pair Two)" in notes
    assert "submission_999 is not in submission_metadata.yml" in notes


def test_a_gradescope_submission_with_two_notebooks_is_refused_as_gradescope_would(tmp_path):
    export = _gradescope_folder(tmp_path)
    (export / "submission_249001" / "scratch.ipynb").write_bytes(NOTEBOOK)
    sub = _by_key(collect([export]))["2001"]
    with pytest.raises(Ungradable, match=r"holds 2 notebooks \(01_tensors.ipynb, scratch.ipynb\)"):
        notebook_bytes(read_bytes(sub.path), sub.path)


def test_a_gradescope_export_zip_is_expanded_like_its_folder(tmp_path):
    export = _gradescope_folder(tmp_path / "src")
    members = {
        f"assignment_77_export/{p.relative_to(export).as_posix()}": p.read_bytes()
        for p in export.rglob("*")
        if p.is_file()
    }
    write_zip(tmp_path / "assignment_77_export.zip", members)
    from_zip = read_intake([tmp_path / "assignment_77_export.zip"])
    from_folder = read_intake([export])
    assert [(s.key, s.lms) for s in from_zip.submissions] == [
        (s.key, s.lms) for s in from_folder.submissions
    ]
    group = _by_key(from_zip.submissions)["2002_2003"]
    assert group.path.read_bytes() == NOTEBOOK and not group.path.is_relative_to(tmp_path)


# -- from results to students --------------------------------------------------------------------
def _t(q, name, score, max_score, hidden=False):
    return TestResult(q, name, score, max_score, score >= max_score, "", hidden)


def _graded(key: str, score: float, lms: dict) -> SubmissionResult:
    tests = [_t("q1", "test_a", score, 6), _t("q2", "test_b", 0, 4)]
    return SubmissionResult("01_tensors", key, "trusted", "graded", tests, lms=lms)


CANVAS_ID = {"source": "canvas", "canvas_user_id": "12345", "name": "doejane", "late": True,
             "members": [{"name": "doejane", "canvas_user_id": "12345"}]}  # fmt: skip
GROUP = {
    "source": "gradescope",
    "members": [
        {"name": "Pair One", "sis_user_id": "2002", "email": "one@uni.edu"},
        {"name": "Pair Two", "sis_user_id": "2003", "email": "two@uni.edu"},
    ],
}


def test_results_keep_their_lms_identity_and_old_results_read_without_one(tmp_path):
    r = _graded("doejane_12345", 5, CANVAS_ID)
    write_results_json(r, tmp_path / "a" / "results.json")
    assert read_results_json(tmp_path / "a" / "results.json").lms == CANVAS_ID
    doc = json.loads((tmp_path / "a" / "results.json").read_text())
    assert doc["extra_data"]["lms"]["canvas_user_id"] == "12345"
    del doc["extra_data"]["lms"]  # a results.json from before
    (tmp_path / "a" / "results.json").write_text(json.dumps(doc))
    assert read_results_json(tmp_path / "a" / "results.json").lms == {}


def test_exports_map_results_to_students_without_a_roster():
    results = [
        _graded("doejane_12345", 5, CANVAS_ID),
        _graded("2002_2003", 6, GROUP),
        _graded("plain", 1, {}),
        SubmissionResult("01_tensors", "anon_x", "trusted", "graded", [], lms={"members": []}),
    ]
    text = canvas_csv(results, None, "Tensors", 5678)
    assert text.split("\r\n") == [
        "Student,ID,SIS User ID,SIS Login ID,Section,Tensors (5678)",
        "    Points Possible,,,,,10",
        "Pair One,,2002,,,6",  # every member of the group gets the grade
        "Pair Two,,2003,,,6",
        "doejane,12345,,,,5",
        "",
    ]
    assert moodle_csv(results, None, "T").split("\r\n")[1:3] == [
        'one@uni.edu,Pair One,6,"6 / 10; q1 6/6, q2 0/4; failed public tests: q2: test_b"',
        'two@uni.edu,Pair Two,6,"6 / 10; q1 6/6, q2 0/4; failed public tests: q2: test_b"',
    ]
    rows = list(csv.DictReader(io.StringIO(plain_csv(results))))
    assert [(r["submission"], r["name"]) for r in rows] == [
        ("2002_2003", "Pair One"), ("2002_2003", "Pair Two"), ("anon_x", ""),
        ("doejane_12345", "doejane"), ("plain", ""),
    ]  # fmt: skip
    m = match(results, None)
    assert [r.submission for r in m.no_roster_row] == ["anon_x", "plain"]


def test_a_roster_keyed_by_canvas_user_id_still_matches_and_fills_in():
    roster = parse_roster(
        "submission,name,canvas_user_id,sis_user_id,section\n"
        '12345,"Doe, Jane",12345,S1,Sec A\n'  # keyed by user id, not by results folder
        "x,Pair Two,,2003,Sec B\n"
        "nobody,No Body,999,,\n"
    )
    results = [_graded("doejane_12345", 5, CANVAS_ID), _graded("2002_2003", 6, GROUP)]
    m = match(results, roster)
    got = [
        (r.submission, st.name, st.canvas_user_id, st.sis_user_id, st.section) for r, st in m.pairs
    ]
    assert got == [
        ("2002_2003", "Pair One", "", "2002", ""),
        ("2002_2003", "Pair Two", "", "2003", "Sec B"),
        ("doejane_12345", "Doe, Jane", "12345", "S1", "Sec A"),
    ]
    assert [st.label for st in m.no_result] == ["nobody (No Body)"]
    assert canvas_csv(results, roster, "T").split("\r\n")[-2] == '"Doe, Jane",12345,S1,,Sec A,5'


def test_a_roster_row_for_the_submission_overrides_the_download_and_says_so():
    roster = parse_roster("submission,name,canvas_user_id\ndoejane_12345,Real Person,777\n")
    m = match([_graded("doejane_12345", 5, CANVAS_ID)], roster)
    assert [(st.name, st.canvas_user_id) for _, st in m.pairs] == [("Real Person", "777")]
    assert m.notes == [
        "doejane_12345: roster line 2 is used, not what the download named "
        "(doejane (canvas_user_id 12345))"
    ]


def test_one_person_named_by_two_submissions_is_delivered_to_by_neither():
    results = [_graded("doejane_12345", 5, CANVAS_ID), _graded("again", 9, CANVAS_ID)]
    m = match(results, None)
    assert m.pairs == [] and len(m.conflicts) == 2
    assert "canvas_user_id 12345 is named by 2 submissions (again, doejane_12345)" in m.notes[0]
    assert canvas_csv(results, None, "T").count("\r\n") == 2  # header and points only


def _write(folder: Path, results: list[SubmissionResult]) -> Path:
    for r in results:
        write_results_json(r, folder / r.submission / "results.json")
    return folder


def test_export_without_roster_uses_the_identities_and_an_empty_export_fails(tmp_path, capsys):
    folder = _write(tmp_path / "results", [_graded("doejane_12345", 5, CANVAS_ID)])
    out = tmp_path / "canvas.csv"
    args = ["export", str(folder), "--format", "canvas", "-o", str(out)]
    assert main(args) == 0
    assert out.read_bytes().decode().split("\r\n")[2] == "doejane,12345,,,,5"
    # moodle by e-mail: the Canvas download named no e-mail, so no row can be written
    out.unlink()
    assert main(["export", str(folder), "--format", "moodle", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "error: no student rows to export (1 no email); nothing written" in err
    assert not out.exists()
    # a roster that names no one of these results: exit 1 and why, not an empty file and 0
    (tmp_path / "roster.csv").write_text("submission,canvas_user_id\nsomeone,1\n")
    _write(folder, [_graded("plain", 1, {})])
    (folder / "doejane_12345" / "results.json").unlink()
    rc = main([*args, "--roster", str(tmp_path / "roster.csv")])
    err = capsys.readouterr().err
    assert rc == 1 and "no student rows to export (1 no roster row or identity)" in err
    assert not out.exists()
    # and results that carry no one, without a roster: bad input, as before
    assert main(args) == 2
    assert "--format canvas needs --roster" in capsys.readouterr().err


# -- the whole way: grade a Canvas zip and a Gradescope export, export, push ---------------------
TEST_FILE = """from otter.test_files import test_case

OK_FORMAT = False

name = "q1"
points = 4

@test_case(points=None, hidden=False)
def test_public(inc):
    assert inc(1) == 2
"""


def _course(root: Path, aid: str = "01_tensors") -> Assignment:
    """A built assignment, as small as grading needs (see test_batch_resilience.py)."""
    a = Assignment(aid, root)
    a.master.parent.mkdir(parents=True)
    a.master.write_text(NOTEBOOK.decode())
    a.student_dir.mkdir(parents=True)
    a.tests_dir.mkdir(parents=True)
    (a.tests_dir / "q1.py").write_text(TEST_FILE)
    write_zip(a.autograder_zip, {"tests/q1.py": TEST_FILE.encode()})
    return a


def _full_marks(nb_bytes, name, autograder_zip, specs, *, timeout=900.0):
    """Stands in for `otter run`: full marks for any valid notebook."""
    parse_notebook(nb_bytes, name)
    tests = [TestResult(s.question, s.name, s.points, s.points, True, "", s.hidden) for s in specs]
    return SubmissionResult("", name, "otter", "graded", tests)


@pytest.fixture
def graded(tmp_path, monkeypatch, capsys):
    """`tensorgrade grade` on a Canvas zip and a Gradescope export (a fake engine: fast)."""
    a = _course(tmp_path / "course")
    monkeypatch.setenv("TENSORGRADE_ROOT", str(a.root))
    monkeypatch.setattr(otter_engine, "grade", _full_marks)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    _canvas_zip(downloads / "submissions.zip")
    _gradescope_folder(downloads)
    out = tmp_path / "results"
    cmd = ["grade", str(downloads), "-a", a.id, "-o", str(out), "--engine", "otter", "-q"]
    assert main(cmd) == 0
    captured = capsys.readouterr()
    return out, cmd, captured


def test_grading_downloads_records_who_and_reruns_reuse(graded, capsys):
    out, cmd, captured = graded
    assert "submissions.zip: a Canvas download, 4 file(s) of 3 student(s)" in captured.err
    assert "doejane_12345: graded doejane_LATE_12345_678_01_tensors-1.ipynb" in captured.err
    keys = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert keys == ["2001", "2002_2003", "2004", "doejane_12345", "leeann_34567", "smithbob_23456"]
    jane = read_results_json(out / "doejane_12345" / "results.json")
    assert jane.score == 4 and jane.lms["canvas_user_id"] == "12345" and jane.lms["late"]
    pdf = read_results_json(out / "2004" / "results.json")
    assert pdf.status == "ungradable" and "No notebook (.ipynb) was found" in pdf.reason
    assert pdf.lms["members"] == [
        {"name": "Pdf Only", "sis_user_id": "2004", "email": "pdf@uni.edu"}
    ]
    rows = {r["submission"]: r for r in csv.DictReader((out / "grades.csv").open())}
    assert rows["2002_2003"]["score"] == "4" and "submissions" not in rows
    # a rerun expands the zip again (elsewhere) and reuses every result
    assert main(cmd) == 0
    assert "reusing 6 result(s)" in capsys.readouterr().err


def test_results_of_a_download_export_without_a_roster(graded, tmp_path, capsys):
    out, _, _ = graded
    csv_path = tmp_path / "canvas.csv"
    rc = main(
        [
            "export",
            str(out),
            "--format",
            "canvas",
            "-o",
            str(csv_path),
            "--canvas-assignment-id",
            "5678",
        ]
    )
    assert rc == 0
    assert csv_path.read_bytes().decode().split("\r\n")[2:] == [
        "Ada Lovelace,,2001,,,4",
        "Pair One,,2002,,,4",
        "Pair Two,,2003,,,4",
        "doejane,12345,,,,4",
        "leeann,34567,,,,4",
        "smithbob,23456,,,,4",
        "",
    ]  # Pdf Only is ungradable: left out, and said
    assert "ungradable submission(s) left out" in capsys.readouterr().err
    assert len(load_results_dir(out)) == 6


def test_results_of_a_download_are_pushed_without_a_roster(graded, monkeypatch, capsys):
    out, _, _ = graded
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(canvas_mod, "_sleep", lambda s: None)
    fake = FakeCanvas()
    fake.add_course(1)
    fake.add_assignment(1, 2, "Tensors", 4)
    for uid, name, sis in [(12345, "Jane Doe", ""), (34567, "Ann Lee", ""), (23456, "Bob Smith", ""),
                           (2, "Ada Lovelace", "2001"), (3, "Pair One", "2002"), (4, "Pair Two", "2003")]:  # fmt: skip
        fake.add_student(1, uid, name, sis_user_id=sis)
    monkeypatch.setenv("CANVAS_API_TOKEN", fake.token)
    with fake:
        rc = main(
            [
                "lms",
                "canvas",
                "push",
                str(out),
                "--course",
                "1",
                "--assignment",
                "2",
                "--url",
                fake.url,
            ]
        )
    assert rc == 0, capsys.readouterr()
    for uid in (12345, 34567, 23456, 2, 3, 4):
        assert fake.state(1, 2, uid)[0] == 4.0
    assert "6 updated, 0 already up to date, 0 failed" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.sandbox
def test_a_canvas_zip_graded_for_real(built_course, tmp_path):
    """The trusted engine on a downloaded zip: the latest upload is graded, the earlier one is
    not, and the export finds the Canvas user without a roster."""
    import subprocess

    a = built_course["01_tensors"]
    zip_path = tmp_path / "submissions.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(a.student, "doejane_12345_501_01_tensors.ipynb")  # blank: 0 points
        z.write(a.solution, "doejane_LATE_12345_678_01_tensors-1.ipynb")  # resubmitted
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "tensorgrade", "grade", str(zip_path), "-a", a.id, "-o", str(out)]
    proc = subprocess.run(cmd, cwd=a.root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "earlier, not graded: doejane_12345_501_01_tensors.ipynb" in proc.stderr
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["doejane_12345"]
    res = read_results_json(out / "doejane_12345" / "results.json")
    assert res.score == res.max_score == 100 and res.lms["canvas_user_id"] == "12345"
    export = subprocess.run(
        [sys.executable, "-m", "tensorgrade", "export", str(out), "--format", "canvas"],
        cwd=a.root, capture_output=True, text=True,
    )  # fmt: skip
    assert export.returncode == 0, export.stderr
    assert export.stdout.splitlines()[2] == "doejane,12345,,,,100"
