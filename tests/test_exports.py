"""Roster reading and the CSV exports (canvas, moodle, plain), as functions and as a command."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from tensorgrade.cli import main
from tensorgrade.lms.exports import canvas_csv, export_notes, moodle_csv, plain_csv
from tensorgrade.lms.feedback import comment_text, one_line
from tensorgrade.lms.roster import RosterError, match, parse_roster, read_roster
from tensorgrade.results import SubmissionResult, TestResult, load_results_dir, write_results_json


def _t(q, name, score, max_score, hidden=False, output=""):
    return TestResult(q, name, score, max_score, score >= max_score, output, hidden)


def make_results(folder: Path) -> list[SubmissionResult]:
    """A small batch: full marks, partial (with a failed hidden test), ungradable, unlisted."""
    results = [
        SubmissionResult(
            "01_tensors",
            "alice",
            "trusted",
            "graded",
            [
                _t("q1", "test_shape", 2, 2),
                _t("q1", "test_hidden_values", 0, 1, hidden=True, output="expected 42.0"),
                _t("q2", "test_grad", 1.5, 3, output="gradient wrong at index 3"),
            ],
        ),
        SubmissionResult(
            "01_tensors",
            "bob",
            "trusted",
            "graded",
            [
                _t("q1", "test_shape", 2, 2),
                _t("q1", "test_hidden_values", 1, 1, hidden=True),
                _t("q2", "test_grad", 3, 3),
            ],
        ),
        SubmissionResult(
            "01_tensors",
            "carol",
            "trusted",
            "ungradable",
            [],
            reason="not a notebook: invalid JSON\nat line 1",
        ),
        SubmissionResult(
            "01_tensors",
            "zed",
            "trusted",
            "graded",
            [
                _t("q1", "test_shape", 0, 2),
                _t("q1", "test_hidden_values", 0, 1, hidden=True),
                _t("q2", "test_grad", 1 / 3, 3),
            ],
        ),
    ]
    for r in results:
        write_results_json(r, folder / r.submission / "results.json")
    return load_results_dir(folder)


ROSTER = (
    "submission,name,email,canvas_user_id,sis_user_id,login_id,section\n"
    'alice,"Doe, Alice",alice@uni.edu,101,S1,adoe,Sec A\n'
    "bob,Bob Roberts,bob@uni.edu,,S2,bob,Sec B\n"
    "carol,Carol Chu,carol@uni.edu,103,S3,,Sec A\n"
    "dave,Dave Diaz,,104,S4,,Sec B\n"
)


@pytest.fixture
def batch(tmp_path):
    results = make_results(tmp_path / "results")
    (tmp_path / "roster.csv").write_text(ROSTER)
    return results, parse_roster(ROSTER)


# -- roster ------------------------------------------------------------------------------------
def test_roster_reads_known_and_extra_columns_and_normalises_headers():
    text = '\ufeffSubmission,Name,Canvas User ID,SIS-User-ID,notes\n\nalice,"Doe, Alice",101,S1,x\n'
    r = parse_roster(text)
    a = r["alice"]
    assert (a.name, a.canvas_user_id, a.sis_user_id, a.line) == ("Doe, Alice", "101", "S1", 3)
    assert a.extra == {"notes": "x"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("name,email\nalice,a@x\n", "roster:1: no 'submission' column"),
        (
            "submission,name\nalice,A\nbob,B\nalice,C\n",
            "roster:4: duplicate submission 'alice' (already on line 2)",
        ),
        (
            "submission,canvas_user_id\nalice,101\nbob,102\ncarol,101\n",
            "roster:4: duplicate canvas_user_id '101' (already on line 2)",
        ),
        ("submission,email\na,X@uni.edu\nb,x@UNI.edu\n", "roster:3: duplicate email"),
        ("submission,canvas_user_id\nalice,abc\n", "roster:2: canvas_user_id must be a number"),
        ("submission,name\nalice,Doe, Alice\n", "roster:2: 3 fields but the header has 2"),
        ("submission,name\n,Nobody\n", "roster:2: empty 'submission'"),
        ("submission,Name,name\n", "column 'name' appears twice"),
        ("", "empty file"),
    ],
)
def test_roster_errors_name_the_line(text, message):
    with pytest.raises(RosterError) as e:
        parse_roster(text)
    assert message in str(e.value)


def test_read_roster_missing_file_and_bad_encoding(tmp_path):
    with pytest.raises(RosterError, match="no roster file"):
        read_roster(tmp_path / "nope.csv")
    (tmp_path / "latin1.csv").write_bytes("submission,name\nalice,Jos\xe9\n".encode("latin-1"))
    with pytest.raises(RosterError, match="not UTF-8"):
        read_roster(tmp_path / "latin1.csv")


def test_match_reports_both_kinds_of_leftovers(batch):
    results, roster = batch
    m = match(results, roster)
    assert [r.submission for r, _ in m.pairs] == ["alice", "bob", "carol"]
    assert [r.submission for r in m.no_roster_row] == ["zed"]
    assert [s.submission for s in m.no_result] == ["dave"]


# -- canvas ------------------------------------------------------------------------------------
def test_canvas_csv_exact(batch):
    results, roster = batch
    text = canvas_csv(results, roster, "Tensors", 5678)
    assert text.split("\r\n") == [
        "Student,ID,SIS User ID,SIS Login ID,Section,Tensors (5678)",
        "    Points Possible,,,,,6",
        '"Doe, Alice",101,S1,adoe,Sec A,3.5',
        "Bob Roberts,,S2,bob,Sec B,6",
        # carol is ungradable: left out (an empty cell is not "leave it alone" to Canvas's
        # importer; a missing row is)
        "",
    ]


def test_canvas_csv_ungradable_zero_and_no_id_column(batch):
    results, roster = batch
    rows = list(csv.reader(io.StringIO(canvas_csv(results, roster, "Tensors", ungradable="zero"))))
    assert rows[0][-1] == "Tensors"
    assert rows[4] == ["Carol Chu", "103", "S3", "", "Sec A", "0"]
    assert all(row[-1] != "" for row in rows[2:])  # never an empty grade cell


# -- moodle ------------------------------------------------------------------------------------
def test_moodle_csv_exact(batch):
    results, roster = batch
    text = moodle_csv(results, roster, "Tensors")
    assert text.split("\r\n") == [
        "Email address,Full name,Tensors,Tensors feedback",
        'alice@uni.edu,"Doe, Alice",3.5,"3.5 / 6; q1 2/3, q2 1.5/3; failed public tests: q2: test_grad"',
        'bob@uni.edu,Bob Roberts,6,"6 / 6; q1 3/3, q2 3/3"',
        "",  # carol is ungradable: left out, an empty cell would clear her Moodle grade
    ]


def test_moodle_csv_by_idnumber_leaves_out_rows_without_one(batch):
    results, roster = batch
    rows = list(csv.reader(io.StringIO(moodle_csv(results, roster, "T", "idnumber", "zero"))))
    assert rows[0][0] == "ID number"
    assert [r[0] for r in rows[1:]] == ["S1", "S2", "S3"]
    assert rows[3][2] == "0" and "ungradable: not a notebook: invalid JSON" in rows[3][3]
    ids = list(csv.reader(io.StringIO(moodle_csv(results, roster, "T", "username"))))
    assert [r[0] for r in ids[1:]] == ["adoe", "bob"]
    notes = export_notes("moodle", results, roster, moodle_id_field="username")
    assert notes.no_identifier == ["carol (Carol Chu)"] and notes.no_roster_row == ["zed"]


# -- plain -------------------------------------------------------------------------------------
def test_plain_csv_exact(batch):
    results, roster = batch
    assert plain_csv(results, roster).split("\r\n") == [
        "submission,name,email,sis_user_id,assignment,status,score,max_score,q1,q2,reason",
        'alice,"Doe, Alice",alice@uni.edu,S1,01_tensors,graded,3.5,6,2,1.5,',
        "bob,Bob Roberts,bob@uni.edu,S2,01_tensors,graded,6,6,3,3,",
        "carol,Carol Chu,carol@uni.edu,S3,01_tensors,ungradable,0,0,,,not a notebook: invalid JSON at line 1",
        "zed,,,,01_tensors,graded,0.333333,6,0,0.333333,",
        "dave,Dave Diaz,,S4,,no result,,,,,no results.json for this roster row",
        "",
    ]


def test_plain_csv_round_trips_the_numbers(batch):
    results, roster = batch
    rows = {r["submission"]: r for r in csv.DictReader(io.StringIO(plain_csv(results, roster)))}
    for r in results:
        row = rows[r.submission]
        assert row["status"] == r.status
        assert float(row["score"]) == pytest.approx(r.score, abs=1e-6)
        assert float(row["max_score"]) == pytest.approx(r.max_score, abs=1e-6)
        for q, (s, _) in r.question_scores().items():
            assert float(row[q]) == pytest.approx(s, abs=1e-6)
    assert rows["dave"]["status"] == "no result"


def test_plain_csv_without_roster_and_formula_text(tmp_path):
    r = SubmissionResult("a1", "=cmd()", "trusted", "ungradable", [], reason="@bad")
    rows = list(csv.reader(io.StringIO(plain_csv([r]))))
    assert rows[1][0] == "'=cmd()" and rows[1][-1] == "'@bad"


FORMULA = ("=", "+", "-", "@", "\t", "\r")
HOSTILE_ROSTER = (
    "submission,name,email,canvas_user_id,sis_user_id,login_id,section\n"
    "=1+1,=HYPERLINK(\"http://x\"),-e@x.edu,101,+S1,=cmd|' /C calc'!A0,-A\n"
    "ok,Ok Person,ok@x.edu,102,S2,ok,B\n"
)


def _hostile_results() -> list[SubmissionResult]:
    return [
        SubmissionResult(
            "01_tensors",
            "=1+1",
            "trusted",
            "graded",
            [_t("q1", "test_a", 1, 2, output="-1 expected"), _t("=q2", "@t", 0.5, 1)],
        ),
        SubmissionResult(
            "01_tensors", "ok", "trusted", "ungradable", [], reason="@SUM(A1) \ud800 bad"
        ),
        SubmissionResult("01_tensors", "-2", "trusted", "ungradable", [], reason="\t=x"),
    ]


@pytest.mark.parametrize("fmt", ["plain", "canvas", "moodle"])
def test_every_export_neutralises_formulas_and_keeps_numbers(fmt):
    from tensorgrade.lms.exports import export_csv

    roster = parse_roster(HOSTILE_ROSTER)
    text = export_csv(fmt, _hostile_results(), roster, assignment_name="=T", ungradable="zero")
    text.encode("utf-8")  # no lone surrogate left
    rows = list(csv.reader(io.StringIO(text)))
    numbers = []
    for row in rows:
        for cell in row:
            assert not cell.startswith(FORMULA), (fmt, cell)
            try:
                numbers.append(float(cell))
            except ValueError:
                pass
    assert 1.5 in numbers and 0.0 in numbers  # scores are plain numbers, not quoted text
    assert any("'=1+1" in row or '\'=HYPERLINK("http://x")' in row for row in rows)


def test_export_and_report_survive_lone_surrogates_in_a_results_file(tmp_path, capsys):
    folder = tmp_path / "results"
    write_results_json(_hostile_results()[0], folder / "a" / "results.json")
    raw = json.loads((folder / "a" / "results.json").read_text())
    raw["extra_data"]["reason"] = "bad \ud800 \x00 text"  # as if edited by hand
    raw["extra_data"]["submission"] = "@x\udcff"
    (folder / "a" / "results.json").write_text(json.dumps(raw))
    out = tmp_path / "plain.csv"
    assert main(["export", str(folder), "--format", "plain", "-o", str(out)]) == 0
    rows = list(csv.reader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert rows[1][0] == "'@x\ufffd" and rows[1][-1] == "bad \ufffd text"
    assert main(["export", str(folder), "--format", "plain"]) == 0
    assert "'@x\ufffd" in capsys.readouterr().out
    assert main(["report", str(folder), "-o", str(tmp_path / "pages"), "-q"]) == 0
    for page in (tmp_path / "pages").iterdir():
        page.read_text(encoding="utf-8")


# -- feedback ----------------------------------------------------------------------------------
def test_feedback_never_shows_hidden_tests_and_marks_content(batch):
    results, _ = batch
    alice = results[0]
    text, mark = comment_text(alice)
    assert "q1: 2 / 3" in text and "q2: 1.5 / 3" in text and "q2: test_grad" in text
    assert "test_hidden_values" not in text and "42" not in text
    assert "test_hidden_values" not in one_line(alice)
    assert text.endswith("\n" + mark) and mark.startswith("[tensorgrade 01_tensors ")
    alice.tests[2].score = 3.0
    assert comment_text(alice)[1] != mark  # a regrade gets a new comment


# -- the command -------------------------------------------------------------------------------
def test_export_command_writes_file_and_reports_leftovers(tmp_path, batch, capsys):
    out = tmp_path / "out" / "canvas.csv"
    rc = main(
        ["export", str(tmp_path / "results"), "--format", "canvas", "--roster",
         str(tmp_path / "roster.csv"), "--assignment-name", "Tensors", "--canvas-assignment-id",
         "5678", "-o", str(out)]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 0
    assert out.read_text().startswith("Student,ID,SIS User ID,SIS Login ID,Section,Tensors (5678)")
    assert "no roster row or student identity and are not in this file: zed" in err
    assert "no result and are not in this file: dave (Dave Diaz)" in err
    assert "ungradable submission(s) left out" in err and "carol" in err
    assert "2 student rows" in err


def test_export_command_plain_to_stdout(tmp_path, batch, capsys):
    rc = main(["export", str(tmp_path / "results"), "--format", "plain"])
    out = capsys.readouterr().out
    assert rc == 0 and out.count("\r\n") == 5 and "zed," in out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--format", "moodle"], "--format moodle needs --roster"),
        (["--format", "canvas", "--roster", "missing.csv"], "no roster file at"),
        (["--format", "canvas", "--roster", "bad.csv"], "bad.csv:3: duplicate submission 'a'"),
        (["--format", "plain", "--results-assignment", "99_x"], "no results for assignment '99_x'"),
    ],
)
def test_export_command_bad_input_exits_2(tmp_path, batch, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    Path("bad.csv").write_text("submission\na\na\n")
    assert main(["export", "results", *extra]) == 2
    assert f"error: {message}" in capsys.readouterr().err


def test_export_command_refuses_mixed_assignments_and_missing_folder(tmp_path, batch, capsys):
    other = SubmissionResult("02_autodiff", "erin", "trusted", "graded", [_t("q1", "t", 1, 1)])
    write_results_json(other, tmp_path / "results" / "erin" / "results.json")
    assert main(["export", str(tmp_path / "results"), "--format", "plain"]) == 2
    assert "several assignments (01_tensors, 02_autodiff)" in capsys.readouterr().err
    args = ["export", str(tmp_path / "results"), "--format", "plain", "--results-assignment"]
    assert main([*args, "02_autodiff"]) == 0
    assert "erin" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "nothing"), "--format", "plain"]) == 2
    assert "error: no results folder" in capsys.readouterr().err


def test_export_help_explains_formats(capsys):
    with pytest.raises(SystemExit) as e:
        main(["export", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "gradebook import" in out and "--moodle-id" in out
