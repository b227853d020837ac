"""In a batch graded in one process, the next submission's sandbox is launched while the judge runs
the current one's tests (``judge.sandbox.Spare``): it must be as fresh as one started on demand,
used only with the limits it was made for, and gone when the batch ends."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tensorgrade.course import Assignment
from tensorgrade.grading import GradeOptions, grade_many
from tensorgrade.judge import sandbox
from tensorgrade.judge.sandbox import Limits, Spare
from tensorgrade.submissions import Submission
from tensorgrade.zips import write_zip

pytestmark = pytest.mark.sandbox

# Each submission looks for what an earlier one could have left (a file in its folder or in /tmp,
# a process still running), then leaves all three behind.
CELLS = """
import os, subprocess, sys
left = sorted(p for p in ("left.txt", "/tmp/tg-left.txt") if os.path.exists(p))
def running(pid):
    try:
        return b"tg-left-sleeper" in open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        return False
left += ["process"] if any(running(p) for p in os.listdir("/proc") if p.isdigit()) else []
left = ", ".join(left)
def leftovers():
    return left
for p in ("left.txt", "/tmp/tg-left.txt"):
    try:
        open(p, "w").write("from an earlier submission")
    except OSError:
        pass
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)  # tg-left-sleeper"])
"""
TEST_FILE = """from otter.test_files import test_case

name = "q1"
points = 2

@test_case(points=None, hidden=True)
def test_nothing_left_over(leftovers):
    assert leftovers() == "", "found " + leftovers()
"""


def _assignment(root):
    a = Assignment("x1_spare", root)
    nb = {
        "cells": [{"cell_type": "code", "source": CELLS, "metadata": {}, "outputs": [],
                   "execution_count": None, "id": "c1"}],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
        "nbformat": 4, "nbformat_minor": 5,
    }  # fmt: skip
    a.master.parent.mkdir(parents=True)
    a.master.write_text(json.dumps(nb))
    a.student_dir.mkdir(parents=True)
    a.tests_dir.mkdir(parents=True)
    (a.tests_dir / "q1.py").write_text(TEST_FILE)
    write_zip(a.autograder_zip, {"tests/q1.py": TEST_FILE.encode()})
    return a, json.dumps(nb).encode()


def _alive(uids: list[int]) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "uid=,pid=,args="], capture_output=True, text=True).stdout
    return [ln for ln in ps.splitlines() if ln.split() and int(ln.split()[0]) in uids]


def test_each_next_submission_gets_a_fresh_readied_sandbox(tmp_path, monkeypatch):
    a, nb = _assignment(tmp_path / "course")
    jobs = []
    for name in ("ada", "bo", "cy", "di"):
        (tmp_path / f"{name}.ipynb").write_bytes(nb)
        jobs.append((a, Submission(name, tmp_path / f"{name}.ipynb")))
    launched, started = [], []
    real_launch, real_start = Spare.launch.__func__, sandbox.Sandbox.start
    monkeypatch.setattr(
        Spare, "launch", classmethod(lambda c, *a: launched.append(1) or real_launch(c, *a))
    )
    monkeypatch.setattr(sandbox.Sandbox, "start", lambda s: started.append(1) or real_start(s))

    opts = GradeOptions(engine="trusted", jobs=1, progress=False)
    results = [r for _, r in grade_many(jobs, opts, {a.id: "ag"})]

    # every submission found nothing of the one before it, in a sandbox it did not start itself
    assert [(r.score, r.status) for r in results] == [(2.0, "graded")] * 4, [
        r.tests for r in results
    ]
    assert len(launched) == 3 and len(started) == 1  # the last submission readies none
    uids = [u for r in results for u in r.sandbox_uids]
    if os.geteuid() == 0:
        assert len(set(uids)) == 4  # a uid of its own each
    assert Spare._sandbox is None  # nothing left readied after the batch
    assert _alive([u for u in uids if u != os.getuid()]) == []


def test_a_spare_made_for_other_limits_is_closed_not_used(tmp_path):
    Spare.launch(0, Limits(), None)
    spare = Spare._sandbox
    assert spare is not None and spare.pid
    assert Spare.take(0, Limits(memory_mb=1024), None) is None
    assert spare.pid is None  # closed: killed, its files removed
    assert Spare._sandbox is None
    Spare.launch(0, Limits(), None)
    taken = Spare.take(1, Limits(), None)  # another slot
    assert taken is None and Spare._sandbox is None
    Spare.launch(0, Limits(), tmp_path)
    taken = Spare.take(0, Limits(), tmp_path)
    assert taken is not None
    taken.wait_ready()
    assert taken.isolation.level in ("full", "reduced")
    taken.close()
