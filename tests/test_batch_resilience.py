"""One submission never stops a batch: hostile input is ungradable with a reason, a grader bug is an
internal error for that submission only (traceback to stderr, exit status 3), and the rest is
graded and written, grades.csv included."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import zipfile
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest
from helpers import encrypted

from tensorgrade import grading, otter_engine
from tensorgrade.cli import main
from tensorgrade.course import Assignment
from tensorgrade.grading import INTERNAL_ERROR, GradeOptions, grade_many, is_internal_error
from tensorgrade.results import SubmissionResult, TestResult
from tensorgrade.submissions import Submission, parse_notebook
from tensorgrade.zips import write_zip

TEST_FILE = """from otter.test_files import test_case

OK_FORMAT = False

name = "q1"
points = 4

@test_case(points=None, hidden=False)
def test_public(inc):
    assert inc(1) == 2

@test_case(points=None, hidden=True)
def test_secret(inc):
    assert inc(41) == 42
"""
NOTEBOOK = json.dumps(
    {
        "cells": [{"cell_type": "code", "source": "x = 1", "metadata": {}, "outputs": [],
                   "execution_count": None, "id": "c1"}],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
)  # fmt: skip


def _course(root: Path, aid: str = "x1_demo", tests: bool = True) -> Assignment:
    """A built assignment, as small as grading needs: a master, test files, an autograder zip."""
    a = Assignment(aid, root)
    a.master.parent.mkdir(parents=True)
    a.master.write_text(NOTEBOOK)
    a.student_dir.mkdir(parents=True)
    if tests:
        a.tests_dir.mkdir(parents=True)
        (a.tests_dir / "q1.py").write_text(TEST_FILE)
    write_zip(a.autograder_zip, {"tests/q1.py": TEST_FILE.encode()})
    return a


def _fake_otter(boom: str):
    """Stands in for `otter run`: full marks, except that it crashes (a grader bug) on ``boom``."""

    def grade(nb_bytes, name, autograder_zip, specs, *, timeout=900.0):
        if boom in name:
            raise RuntimeError("grader bug \ud800 with secret details")
        parse_notebook(nb_bytes, name)
        tests = [
            TestResult(s.question, s.name, s.points, s.points, True, "", s.hidden) for s in specs
        ]
        return SubmissionResult("", name, "otter", "graded", tests)

    return grade


def test_a_grader_bug_on_one_submission_is_contained(tmp_path, monkeypatch, capsys):
    a = _course(tmp_path / "course")
    subs = tmp_path / "subs"
    subs.mkdir()
    for name in ("ada", "boom", "cleo"):
        (subs / f"{name}.ipynb").write_text(NOTEBOOK)
    out = tmp_path / "results"
    monkeypatch.setenv("TENSORGRADE_ROOT", str(a.root))
    monkeypatch.setattr(otter_engine, "grade", _fake_otter("boom"))
    cmd = ["grade", str(subs), "-a", a.id, "-o", str(out), "--engine", "otter", "-q"]
    assert main(cmd) == 3
    captured = capsys.readouterr()
    assert "Traceback" in captured.err and "secret details" in captured.err  # the staff's log
    assert "internal error of the grader on 1 submission(s) (boom)" in captured.err
    rows = {r["submission"]: r for r in csv.DictReader((out / "grades.csv").open())}
    assert rows["ada"]["score"] == rows["cleo"]["score"] == "4"
    assert rows["boom"]["status"] == "ungradable" and rows["boom"]["score"] == "0"
    text = (out / "boom" / "results.json").read_text()
    assert "Traceback" not in text and "secret details" not in text
    boom = json.loads(text)
    assert boom["extra_data"]["reason"] == INTERNAL_ERROR
    assert [t["score"] for t in boom["tests"]] == [0, 0] and len(boom["tests"]) == 2

    # an internal error is never reused: the next run grades it again (here: fixed)
    monkeypatch.setattr(otter_engine, "grade", _fake_otter("nobody"))
    assert main(cmd) == 0
    assert "reusing 2 result(s)" in capsys.readouterr().err
    assert json.loads((out / "boom" / "results.json").read_text())["score"] == 4


def test_grade_one_turns_any_exception_into_an_internal_error(tmp_path, monkeypatch, capsys):
    a = _course(tmp_path / "course")
    path = tmp_path / "boom.ipynb"
    path.write_text(NOTEBOOK)
    monkeypatch.setattr(otter_engine, "grade", _fake_otter("boom"))
    specs = grading._specs(a.tests_dir, "ag")
    res = grading.grade_one(a, specs, Submission("boom", path), GradeOptions(engine="otter"), "ag")
    assert is_internal_error(res) and res.score == 0 and len(res.tests) == 2
    assert all(t.output == INTERNAL_ERROR for t in res.tests)
    assert "RuntimeError: grader bug" in capsys.readouterr().err


def test_a_worker_that_dies_is_retried_alone_and_then_recorded(tmp_path, monkeypatch, capsys):
    a = _course(tmp_path / "course")
    jobs = [(a, Submission(k, tmp_path / f"{k}.ipynb")) for k in ("ada", "boom")]
    calls = []

    def fake_pool(jobs, opts, ags, workers, gpu_ids):
        calls.append(([s.key for _, s in jobs], workers))
        for job in jobs:
            if job[1].key == "boom":
                yield job, BrokenProcessPool("A process in the process pool was terminated")
            else:
                yield job, SubmissionResult(a.id, job[1].key, "otter", "graded")

    monkeypatch.setattr(grading, "_pool", fake_pool)
    got = {s.key: r for (_, s), r in grade_many(jobs, GradeOptions(jobs=2), {a.id: "ag"})}
    assert calls == [(["ada", "boom"], 2), (["boom"], 1)]
    assert got["ada"].status == "graded" and is_internal_error(got["boom"])
    assert "BrokenProcessPool" in capsys.readouterr().err


@pytest.mark.slow  # starts a pool of two worker processes (each imports torch): seconds
def test_worker_processes_contain_errors_too(tmp_path, capfd):
    """In a worker process (-j 2): a job whose tests cannot be loaded is an internal error, the
    other job's result comes back."""
    ok = _course(tmp_path / "course")
    broken = _course(tmp_path / "course", "x2_demo", tests=False)
    (tmp_path / "bad.ipynb").write_text("{not json")
    (tmp_path / "ada.ipynb").write_text(NOTEBOOK)
    jobs = [
        (ok, Submission("bad", tmp_path / "bad.ipynb")),
        (broken, Submission("ada", tmp_path / "ada.ipynb")),
    ]
    opts = GradeOptions(engine="otter", jobs=2)
    got = {s.key: r for (_, s), r in grade_many(jobs, opts, {ok.id: "ag1", broken.id: "ag2"})}
    assert got["bad"].status == "ungradable" and "not valid notebook JSON" in got["bad"].reason
    assert is_internal_error(got["ada"])
    assert "no built tests" in capfd.readouterr().err


# -- end to end --------------------------------------------------------------------------------
def _bad_notebooks(solution: bytes) -> dict[str, tuple[bytes, str]]:
    nb = json.loads(solution)
    code = next(i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code")

    def edited(edit) -> bytes:
        copy = json.loads(solution)
        edit(copy)
        return json.dumps(copy).encode()

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("eve/01_tensors.ipynb", solution)
    return {
        "deep.ipynb": (
            solution.replace(
                b'"metadata": {', b'"metadata": {"x": ' + b"[" * 5000 + b"]" * 5000 + b",", 1
            ),
            "levels deep",
        ),
        "bignum.ipynb": (
            solution.replace(b'"nbformat": 4', b'"nbformat": 4' + b"0" * 4999),
            "5000 characters long",
        ),
        "listmeta.ipynb": (
            edited(lambda n: n.update(metadata=[])),
            "metadata is not a JSON object",
        ),
        "numsource.ipynb": (
            edited(lambda n: n["cells"][code].update(source=[1, 2])),
            f"cell {code + 1} has a malformed source",
        ),
        "locked.zip": (encrypted(buf.getvalue()), "password-protected"),
    }


@pytest.mark.slow
@pytest.mark.sandbox
def test_a_batch_with_hostile_submissions_is_graded_to_the_end(built_course, tmp_path):
    a = built_course["01_tensors"]
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "ada.ipynb").write_bytes(a.solution.read_bytes())
    bad = _bad_notebooks(a.solution.read_bytes())
    for name, (data, _) in bad.items():
        (subs / name).write_bytes(data)
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "tensorgrade", "grade", str(subs), "-a", a.id, "-o", str(out)]
    proc = subprocess.run([*cmd, "-j", "2", "-q"], cwd=a.root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]  # hostile input is not a grader error
    keys = {"ada", *(Path(n).stem for n in bad)}
    assert {p.parent.name for p in out.glob("*/results.json")} == keys
    rows = {r["submission"]: r for r in csv.DictReader((out / "grades.csv").open())}
    assert set(rows) == keys
    assert rows["ada"]["status"] == "graded" and float(rows["ada"]["max_score"]) > 0
    assert rows["ada"]["score"] == rows["ada"]["max_score"]
    for name, (_, reason) in bad.items():
        row = rows[Path(name).stem]
        assert row["status"] == "ungradable" and row["score"] == "0", row
        assert reason in row["reason"], (name, row["reason"])
