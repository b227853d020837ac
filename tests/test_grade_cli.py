"""`tensorgrade grade` on a batch: per-submission results, grades.csv, resume, bad input."""

import csv
import json
import shutil
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.sandbox]


@pytest.mark.parametrize("engine", ["trusted", "otter"])
def test_grade_batch_writes_results_and_resumes(engine, built_course, tmp_path):
    a = built_course["01_tensors"]
    subs = tmp_path / "subs"
    subs.mkdir()
    shutil.copy(a.solution, subs / "ada.ipynb")
    shutil.copy(a.student, subs / "bob.ipynb")
    (subs / "eve.ipynb").write_text('{"cells": [')  # truncated
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "tensorgrade", "grade", str(subs), "-a", a.id, "-o", str(out)]
    proc = subprocess.run(
        [*cmd, "--engine", engine, "-j", "2"], cwd=a.root, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "grading" in proc.stderr  # the progress bar
    rows = {r["submission"]: r for r in csv.DictReader((out / "grades.csv").open())}
    assert rows["ada"]["score"] == "100" and rows["ada"]["status"] == "graded"
    assert rows["bob"]["score"] == "0" and rows["bob"]["status"] == "graded"
    assert rows["eve"]["status"] == "ungradable" and "truncated" in rows["eve"]["reason"]
    ada = json.loads((out / "ada" / "results.json").read_text())
    assert ada["score"] == 100 and len(ada["tests"]) > 8
    # hidden tests' failure output never quotes test source
    bob = json.loads((out / "bob" / "results.json").read_text())
    hidden = [t for t in bob["tests"] if t["visibility"] == "after_published"]
    assert hidden and not any("def test_" in t["output"] for t in hidden)
    assert bob["extra_data"]["engine"] == engine

    again = subprocess.run([*cmd, "--engine", engine], cwd=a.root, capture_output=True, text=True)
    assert again.returncode == 0
    assert "reusing 3 result(s)" in again.stderr
    (out / "ada" / "results.json").unlink()  # as if the batch had been killed before ada
    third = subprocess.run([*cmd, "--engine", engine], cwd=a.root, capture_output=True, text=True)
    assert "reusing 2 result(s)" in third.stderr
    assert json.loads((out / "ada" / "results.json").read_text())["score"] == 100
