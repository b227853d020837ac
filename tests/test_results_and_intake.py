"""Results files and submission intake: formats, atomic writes, clear reasons for bad input."""

import json

import pytest

from tensorgrade.results import (
    SubmissionResult,
    TestResult,
    grades_csv,
    read_results_json,
    write_results_json,
)
from tensorgrade.submissions import Ungradable, collect, parse_notebook, read_bytes


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
