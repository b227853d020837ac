"""Results files and submission intake: formats, atomic writes, clear reasons for bad input."""

import base64
import csv
import io
import json
import os
import zipfile
from pathlib import Path

import pytest
from helpers import encrypted

from tensorgrade.results import (
    MAX_RESULTS_BYTES,
    SubmissionResult,
    TestResult,
    atomic_write_text,
    grades_csv,
    read_results_json,
    write_results_json,
)
from tensorgrade.safetext import clean_text
from tensorgrade.submissions import (
    Ungradable,
    cell_source,
    collect,
    notebook_bytes,
    parse_notebook,
    read_bytes,
)


def _result(score=2.0):
    return SubmissionResult(
        assignment="01_tensors",
        submission="ada",
        engine="otter",
        status="graded",
        tests=[
            TestResult("q1", "test_a", score, 2.0, score == 2.0, "ok", hidden=False),
            TestResult("q10", "test_b", 0.0, 3.0, False, "failed", hidden=True),
        ],
    )


def test_results_json_is_gradescope_shaped_and_round_trips(tmp_path):
    path = tmp_path / "ada" / "results.json"
    write_results_json(_result(), path)
    data = json.loads(path.read_text())
    assert data["score"] == 2.0
    assert [t["visibility"] for t in data["tests"]] == ["visible", "after_published"]
    assert {"name", "score", "max_score", "status", "output", "visibility"} <= set(data["tests"][0])
    again = read_results_json(path)
    assert again.question_scores() == {"q1": (2.0, 2.0), "q10": (0.0, 3.0)}
    assert not list(tmp_path.rglob("*.tmp")), "no temporary files left behind"


def test_grades_csv_orders_questions_numerically():
    text = grades_csv([_result(), _result(0.0)])
    header = text.splitlines()[0].split(",")
    assert header[5:7] == ["q1", "q10"]
    assert text.splitlines()[1].startswith("ada,01_tensors,graded,2,5,2,0")


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"{not json", "not valid notebook JSON"),
        (b'{"cells": [], "nbformat": 3}', "format v3"),
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b'{"nbformat": 4}', "not a Jupyter notebook"),
        (b'{"nbformat": 4, "cells": [{"cell_type": "weird"}]}', "cell 1 is malformed"),
        (b"[1, 2]", "not a Jupyter notebook"),
    ],
)
def test_bad_notebooks_are_ungradable_with_a_reason(data, reason):
    with pytest.raises(Ungradable, match=reason):
        parse_notebook(data, "sub.ipynb")


def test_truncated_notebook_is_ungradable(root):
    text = (root / "assignments" / "01_tensors" / "01_tensors.ipynb").read_bytes()
    with pytest.raises(Ungradable, match="truncated"):
        parse_notebook(text[: len(text) // 2], "sub.ipynb")


def test_symlinks_and_huge_files_are_refused(tmp_path):
    real = tmp_path / "real.ipynb"
    real.write_text("{}")
    link = tmp_path / "link.ipynb"
    link.symlink_to(real)
    with pytest.raises(Ungradable, match="symbolic link"):
        read_bytes(link)
    big = tmp_path / "big.ipynb"
    with open(big, "wb") as f:
        f.truncate(25 * 1024 * 1024)
    with pytest.raises(Ungradable, match="MiB"):
        read_bytes(big)


def test_collect_names_submissions_after_files_and_folders(tmp_path):
    (tmp_path / "bob").mkdir()
    (tmp_path / "bob" / "01_tensors.ipynb").write_text("{}")
    (tmp_path / "carol.ipynb").write_text("{}")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / ".ipynb_checkpoints" / "x.ipynb").write_text("{}")
    keys = sorted(s.key for s in collect([tmp_path]))
    assert keys == ["bob", "carol"]
    with pytest.raises(FileNotFoundError):
        collect([tmp_path / "missing.ipynb"])


# -- hostile notebooks: each becomes Ungradable with a reason, never another exception ----------
def _student_nb(root) -> dict:
    return json.loads((root / "assignments" / "01_tensors" / "01_tensors.ipynb").read_text())


def _edited(root, edit) -> bytes:
    nb = _student_nb(root)
    edit(nb)
    return json.dumps(nb).encode("utf-8", "surrogatepass")


def _code_cell(nb: dict) -> dict:
    return next(c for c in nb["cells"] if c["cell_type"] == "code")


HOSTILE = {
    "deep nesting": (
        lambda root: (
            b'{"nbformat": 4, "nbformat_minor": 5, "cells": [], "metadata": {"x": '
            + b"[" * 5000
            + b"]" * 5000
            + b"}}"
        ),
        "more than 100 levels deep",
    ),
    "deep but under the recursion limit": (
        lambda root: _edited(
            root, lambda nb: nb["metadata"].update(x=json.loads("[" * 500 + "]" * 500))
        ),
        "more than 100 levels deep",
    ),
    "5000-digit integer": (
        lambda root: _edited(root, lambda nb: nb["metadata"].update(n=0)).replace(
            b'"n": 0', b'"n": ' + b"7" * 5000
        ),
        "a number 5000 characters long",
    ),
    "101-character float": (
        lambda root: _edited(root, lambda nb: nb["metadata"].update(n=0)).replace(
            b'"n": 0', b'"n": 0.' + b"1" * 99
        ),
        "a number 101 characters long",
    ),
    "metadata a list": (
        lambda root: _edited(root, lambda nb: nb.update(metadata=[1, 2])),
        "metadata is not a JSON object",
    ),
    "source a list of numbers": (
        lambda root: _edited(root, lambda nb: _code_cell(nb).update(source=[1, 2, 3])),
        "cell 1 has a malformed source",
    ),
    "cell_type a list": (
        lambda root: _edited(root, lambda nb: _code_cell(nb).update(cell_type=["code"])),
        "cell 1 is malformed",
    ),
    "cell id a dict": (
        lambda root: _edited(root, lambda nb: _code_cell(nb).update(id={"a": 1})),
        "cell 1 has a malformed id",
    ),
    "outputs of a made-up type": (
        lambda root: _edited(
            root, lambda nb: _code_cell(nb).update(outputs=[{"output_type": "x"}])
        ),
        "does not follow the notebook format in cell 1",
    ),
    "kernelspec a list": (
        lambda root: _edited(root, lambda nb: nb["metadata"].update(kernelspec=[1])),
        "does not follow the notebook format",
    ),
    "nbformat_minor a string": (
        lambda root: _edited(root, lambda nb: nb.update(nbformat_minor="5")),
        "no valid nbformat_minor",
    ),
    "too many cells": (
        lambda root: _edited(root, lambda nb: nb.update(cells=nb["cells"][:1] * 2001)),
        "2001 cells, over the limit",
    ),
    "a huge cell": (
        lambda root: _edited(root, lambda nb: _code_cell(nb).update(source="x" * 1_000_001)),
        "1000001 characters, over the limit",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_notebooks_are_ungradable_with_a_reason(case, root):
    make, reason = HOSTILE[case]
    with pytest.raises(Ungradable, match=reason) as e:
        parse_notebook(make(root), "sub.ipynb")
    assert str(e.value).startswith("sub.ipynb") and len(str(e.value)) < 400


def test_a_notebook_jupyter_would_open_is_accepted_and_lone_surrogates_replaced(root):
    def edit(nb):
        for c in nb["cells"]:
            c["id"] = "same"  # duplicate ids: nbformat repairs them
        nb["metadata"]["made_by"] = {"tool": "x"}  # extra fields other tools add
        _code_cell(nb)["source"] = ["x = '\ud800'\n", "y = 1"]
        nb["nbformat_minor"] = 99  # a future Jupyter: checked like nbformat does

    nb = parse_notebook(_edited(root, edit), "sub.ipynb")
    assert cell_source(_code_cell(nb)) == "x = '\ufffd'\ny = 1"


# -- hostile zips and files --------------------------------------------------------------------
def _zip(members: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_hostile_zips_are_ungradable_with_a_reason(root):
    nb = (root / "assignments" / "01_tensors" / "01_tensors.ipynb").read_bytes()
    good = _zip({"ada/01_tensors.ipynb": nb})
    assert notebook_bytes(good, Path("ada.zip")) == nb
    with pytest.raises(Ungradable, match="password-protected"):
        notebook_bytes(encrypted(good), Path("ada.zip"))
    stored = _zip({"nb.ipynb": nb}, zipfile.ZIP_STORED)
    at = stored.index(b"Assignment")
    with pytest.raises(Ungradable, match="not a readable zip file.*Bad CRC"):
        notebook_bytes(stored[:at] + b"B" + stored[at + 1 :], Path("ada.zip"))
    with pytest.raises(Ungradable, match="1001 files"):
        notebook_bytes(_zip({f"f{i}.txt": b"" for i in range(1001)}), Path("ada.zip"))
    with pytest.raises(Ungradable, match="zip bomb"):
        notebook_bytes(_zip({"nb.ipynb": b" " * 5_000_000}), Path("ada.zip"))
    with pytest.raises(Ungradable, match="not a readable zip file"):
        notebook_bytes(good[: len(good) // 2], Path("ada.zip"))


def test_pipes_and_folders_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.ipynb"
    os.mkfifo(fifo)
    with pytest.raises(Ungradable, match="not a regular file"):
        read_bytes(fifo)  # opening a pipe for reading would wait for a writer forever
    (tmp_path / "dir.ipynb").mkdir()
    with pytest.raises(Ungradable, match="not a regular file"):
        read_bytes(tmp_path / "dir.ipynb")


# -- keys --------------------------------------------------------------------------------------
def test_colliding_names_get_unique_keys_deterministically(tmp_path):
    subs = tmp_path / "subs"
    (subs / "ada").mkdir(parents=True)
    for name in ["ada.ipynb", "ada.zip", "ada-2.ipynb", "Ada.ipynb", "a da.ipynb", "a_da.ipynb"]:
        (subs / name).write_text("{}")
    (subs / "ada" / "01_tensors.ipynb").write_text("{}")
    (subs / "grades.csv.ipynb").write_text("{}")
    got = {s.path.relative_to(subs).as_posix(): s.key for s in collect([subs])}
    assert got == {
        "Ada.ipynb": "Ada",
        "a da.ipynb": "a_da",
        "a_da.ipynb": "a_da-2",
        "ada-2.ipynb": "ada-2",  # asked for its own name: keeps it
        "ada/01_tensors.ipynb": "ada-3",  # sorted by path: the folder ada/ comes first
        "ada.ipynb": "ada-4",
        "ada.zip": "ada-5",
        "grades.csv.ipynb": "grades.csv-2",  # never the batch's grades.csv
    }
    assert len({k.casefold() for k in got.values()}) == len(got)
    # the same files named in another order, or twice, get the same keys
    again = collect([subs / "ada.zip", subs, subs / "Ada.ipynb"])
    assert {s.path.relative_to(subs).as_posix(): s.key for s in again} == got


# -- results.json size, text hygiene, formulas -------------------------------------------------
def _png(n: int) -> str:
    return base64.b64encode(b"\x89PNG\r\n\x1a\n" + os.urandom(n)).decode()


def test_results_json_stays_under_the_cap_and_keeps_every_score(tmp_path):
    notes = "\n".join(f"cell {i} raised ValueError: " + "x" * 300 for i in range(5000))
    tests = [
        TestResult(
            f"q{i % 7}", f"test_{i}", i % 3, 2.0, i % 3 == 2, "Traceback\n" + "y" * 5000, i % 2 == 0
        )
        for i in range(300)
    ]
    big = SubmissionResult(
        "01_tensors",
        "ada",
        "trusted",
        "graded",
        tests,
        reason=notes,
        student_output="z" * 200_000,
        figures=[{"cell": i, "png": _png(60_000)} for i in range(40)],
    )
    path = tmp_path / "ada" / "results.json"
    write_results_json(big, path)
    assert path.stat().st_size <= MAX_RESULTS_BYTES
    back = read_results_json(path)
    assert back.score == big.score and back.max_score == big.max_score
    assert [(t.question, t.name, t.score, t.max_score, t.passed, t.hidden) for t in back.tests] == [
        (t.question, t.name, t.score, t.max_score, t.passed, t.hidden) for t in big.tests
    ]
    assert back.reason.startswith("cell 0 raised ValueError") and "... and " in back.reason
    assert "figure(s) left out" in back.reason and "results.json is limited" in back.reason
    assert len(back.figures) < 40
    data = json.loads(path.read_text())
    assert data["score"] == big.score and len(data["tests"]) == 300


def test_figures_are_dropped_before_any_text_is_cut(tmp_path):
    r = SubmissionResult(
        "01_tensors",
        "ada",
        "trusted",
        "graded",
        [TestResult("q1", "test_a", 1.0, 1.0, True, "fine " * 1000, False)],
        reason="one note",
        student_output="printed " * 2000,
        figures=[{"cell": i, "png": _png(50_000)} for i in range(8)],
    )
    path = tmp_path / "results.json"
    write_results_json(r, path)
    back = read_results_json(path)
    assert path.stat().st_size <= MAX_RESULTS_BYTES
    assert 0 < len(back.figures) < 8 and back.figures == r.figures[: len(back.figures)]
    assert back.student_output == r.student_output and back.tests[0].output == r.tests[0].output
    assert back.reason.startswith("one note\n[") and "long texts" not in back.reason
    small = SubmissionResult("01_tensors", "bob", "trusted", "graded", figures=r.figures[:1])
    write_results_json(small, tmp_path / "small.json")
    assert read_results_json(tmp_path / "small.json") == small  # under the cap: untouched


def test_texts_are_cleaned_where_they_enter_a_result():
    r = SubmissionResult("01_tensors", "ada", "trusted", "graded", reason="a\ud800b\x00c\r\nd")
    r.student_output = "\x1b[31mred\x1b[0m\ttab\n"
    t = TestResult("q1", "test_a", 0.0, 1.0, False, "bad \udcff byte \x07", False)
    assert r.reason == "a\ufffdbc\nd"
    assert r.student_output == "[31mred[0m\ttab\n"
    assert t.output == "bad \ufffd byte "
    assert clean_text("\ud83d\ude00") == "\U0001f600"  # a valid pair is one character


def test_grades_csv_neutralises_formulas_and_survives_surrogates(tmp_path):
    rows = [
        SubmissionResult(
            "01_tensors", "=HYPERLINK(x)", "trusted", "ungradable", reason="@evil \ud800"
        ),
        SubmissionResult(
            "01_tensors", "-2+3", "trusted", "ungradable", reason="+cmd|' /C calc'!A0"
        ),
        _result(),
    ]
    atomic_write_text(tmp_path / "grades.csv", grades_csv(rows))
    got = list(csv.DictReader((tmp_path / "grades.csv").open(encoding="utf-8")))
    by = {r["submission"]: r for r in got}
    assert by["'=HYPERLINK(x)"]["reason"] == "'@evil \ufffd"
    assert by["'-2+3"]["reason"] == "'+cmd|' /C calc'!A0"
    assert by["ada"]["score"] == "2" and by["ada"]["q10"] == "0"  # numbers stay numbers
    for row in got:
        for cell in row.values():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
