"""`tensorgrade grade --backend slurm` against a real single-node Slurm (``slurmcluster.py``).

One cluster serves the module: started once (munged, slurmctld, slurmd from Debian's packages,
no systemd, everything in a temp folder), stopped by PID at the end. The 01 examples are graded
once through it and once by the local pool; the other tests grade a few of them again.
With ``TENSORGRADE_REQUIRE_SLURM=1`` (CI) a machine without Slurm fails these tests.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import slurmcluster

from tensorgrade.results import read_results_json
from tensorgrade.slurm import (
    TASK_END_REASONS,
    Array,
    Entry,
    Manifest,
    TaskEnd,
    _indices,
    account,
    task_end,
)

ROOT = Path(__file__).resolve().parents[1]
# CI's budget: solution, blank, a broken file and mutants up to this many submissions in all
# (01 has dozens of mutants; every one is graded twice here, by the cluster and by the pool)
EXAMPLES = 11
PER_TASK = 3  # 10-11 submissions in 4 tasks: two run at once on a 2-core machine


def _grade(cluster, subs: Path, out: Path, *extra: str, check: int | None = 0):
    cmd = [sys.executable, "-m", "tensorgrade", "grade", str(subs), "-a", "01_tensors"]
    cmd += ["-o", str(out), "--backend", "slurm", "--mem", "1G", "-q", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=cluster.env, capture_output=True, text=True)
    if check is not None:
        assert proc.returncode == check, proc.stdout + proc.stderr
    return proc


def _scores(out: Path, keys=None) -> dict[str, tuple]:
    """submission -> (status, [(question, test, score)]) from its results.json."""
    found = {}
    for p in sorted(out.glob("*/results.json")):
        r = read_results_json(p)
        if keys is None or r.submission in keys:
            found[r.submission] = (r.status, [(t.question, t.name, t.score) for t in r.tests])
    return found


def _arrays(out: Path) -> list[Path]:
    return sorted(p for p in (out / ".slurm").glob("*/") if p.is_dir())


def _job(array: Path) -> str:
    return json.loads((array / "job.json").read_text())["job_id"]


def _wait_gone(cluster, job: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while any(j.split("_")[0] == job for j in cluster.jobs()):
        assert time.monotonic() < deadline, f"job {job} still queued: {cluster.jobs()}"
        time.sleep(1)


@pytest.fixture(scope="module")
def cluster():
    why = slurmcluster.missing()
    if why:
        if os.environ.get("TENSORGRADE_REQUIRE_SLURM") == "1":
            pytest.fail(f"TENSORGRADE_REQUIRE_SLURM=1 but {why}")
        pytest.skip(why)
    c = slurmcluster.start()  # in a temp folder munged can reach; removed by stop()
    print(f"\nslurm test cluster {c.name} idle after {c.start_seconds:.1f} s")
    try:
        yield c
    finally:
        c.stop()
        alive = [n for n, p in c.procs.items() if p.poll() is None]
        assert not alive, f"daemons still running: {alive}"


@pytest.fixture(scope="module")
def examples(built, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("examples")
    proc = subprocess.run(
        [sys.executable, "-m", "tensorgrade", "examples", "01_tensors", "-o", str(d)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    mutants = sorted(d.glob("mutant-*.ipynb"))
    keep = {d / "solution.ipynb", d / "blank.ipynb"}
    keep |= set(mutants[:: max(1, -(-len(mutants) // (EXAMPLES - 3)))])  # spread over the list
    for p in d.glob("*.ipynb"):
        if p not in keep:
            p.unlink()
    (d / "broken.ipynb").write_text('{"cells": [')  # ungradable: the same reason both ways
    return d


@pytest.fixture(scope="module")
def local(examples, tmp_path_factory) -> dict[str, tuple]:
    """The local pool's results of the examples: what the cluster must reproduce."""
    out = tmp_path_factory.mktemp("local")
    cmd = [sys.executable, "-m", "tensorgrade", "grade", str(examples), "-a", "01_tensors"]
    proc = subprocess.run([*cmd, "-o", str(out), "-j", "2", "-q"], cwd=ROOT, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    return _scores(out)


@pytest.fixture(scope="module")
def graded(cluster, examples, local, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("slurm-results")
    return out, _grade(cluster, examples, out, "--per-task", str(PER_TASK))


# -- without a cluster -------------------------------------------------------------------------


def test_task_ids_and_end_states_are_read_as_data():
    assert _indices("3") == [3] and _indices("0-3%2") == [0, 1, 2, 3]
    assert _indices("1,4-5") == [1, 4, 5] and _indices("") == []
    # every end has its own sentence, and the sentence reads back as that end
    assert len(set(TASK_END_REASONS.values())) == len(TaskEnd)


def test_an_ended_task_leaves_a_result_that_says_how(tmp_path, monkeypatch):
    """Each submission of a task that ended without its result gets an ungradable result naming
    the task's end; a submission the task did grade keeps its result; a live task's wait."""
    import tensorgrade.slurm as slurm

    out = tmp_path / "out"
    entries = [Entry(f"s{i}", "01_tensors", f"/nowhere/s{i}.ipynb", "", "ag") for i in range(4)]
    m = Manifest("a", str(ROOT), str(out), sys.executable, "trusted", "full", 900.0, 1, 0, "",
                 [[entries[0], entries[1]], [entries[2]], [entries[3]]])  # fmt: skip
    folder = tmp_path / "arr"
    folder.mkdir()
    graded = slurm.failure_result(entries[0], TaskEnd.COMPLETED, "trusted", ROOT)
    graded.status, graded.reason = "graded", ""  # as if task 0 had graded s0
    slurm.write_results_json(graded, out / "s0" / "results.json")
    ends = {0: TaskEnd.TIMEOUT, 1: TaskEnd.PREEMPTED}
    monkeypatch.setattr(slurm, "ended_states", lambda job: ends)
    log: list[str] = []
    arr = Array(folder, m, "7")
    assert not account(arr, {2: "RUNNING"}, log.append)  # task 2 still runs: not closed
    assert read_results_json(out / "s0" / "results.json").status == "graded"
    s1, s2 = (read_results_json(out / k / "results.json") for k in ("s1", "s2"))
    assert s1.status == "ungradable" and task_end(s1) is TaskEnd.TIMEOUT
    assert s1.source_sha256 == ""  # never reused: regraded on the next run
    assert task_end(s2) is TaskEnd.PREEMPTED
    assert not (out / "s3").exists() and not (folder / "ended.json").exists()
    assert any("TIMEOUT" in line for line in log) and any("PREEMPTED" in line for line in log)
    assert account(arr, {}, log.append)  # task 2 gone, unknown to the scheduler
    assert task_end(read_results_json(out / "s3" / "results.json")) is TaskEnd.UNKNOWN
    assert (folder / "ended.json").exists()


def test_dry_run_prints_a_script_and_writes_nothing(built, tmp_path):
    subs = tmp_path / "subs"
    subs.mkdir()
    for name in ("ada", "bob", "cy"):
        shutil.copy(built["01_tensors"].solution, subs / f"{name}.ipynb")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "tensorgrade", "grade", str(subs), "-a", "01_tensors"]
    cmd += ["-o", str(out), "--backend", "slurm", "--dry-run", "--per-task", "2"]
    cmd += ["--partition", "gpu", "--gpu-slots", "2", "--sbatch=--qos=short"]
    cmd += ["--task-wrapper", "apptainer exec --nv '/shared/grading image.sif'"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0"}  # --gpu-slots checks that a GPU is seen
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "#SBATCH --array=0-1\n" in text and "#SBATCH --partition=gpu\n" in text
    assert "#SBATCH --gres=gpu:1\n" in text and "#SBATCH --cpus-per-task=2\n" in text
    assert "#SBATCH --qos=short\n" in text and "#SBATCH --time=" in text
    wrapped = f"apptainer exec --nv '/shared/grading image.sif' {sys.executable}"
    assert f"exec {wrapped} -m tensorgrade.slurm task" in text
    assert "task 0: ada cy" in text and "task 1: bob" in text
    script = text[text.index("#!/bin/bash") : text.index("# array 0-1")]
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    assert not out.exists()  # nothing written, nothing submitted


def test_slurm_options_need_the_slurm_backend(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tensorgrade", "grade", str(tmp_path), "--no-wait"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "--no-wait need(s) --backend slurm" in proc.stderr


# -- against the cluster -----------------------------------------------------------------------


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_scores_equal_local_grading(graded, local, examples):
    out, proc = graded
    n = len(list(examples.glob("*.ipynb")))
    assert len(local) == n and 5 <= n <= EXAMPLES
    assert _scores(out) == local
    (array,) = _arrays(out)
    manifest = json.loads((array / "manifest.json").read_text())
    sizes = [len(t) for t in manifest["tasks"]]  # packed, as evenly as the count allows
    assert len(sizes) == -(-n // PER_TASK) and sum(sizes) == n and max(sizes) - min(sizes) <= 1
    assert json.loads((array / "ended.json").read_text())["tasks"] == {
        str(i): "COMPLETED" for i in range(len(sizes))
    }
    rows = {r["submission"]: r for r in csv.DictReader((out / "grades.csv").open())}
    assert rows.keys() == local.keys() and rows["solution"]["score"] == "100"
    assert "submitted array" in proc.stderr


@pytest.mark.slurm
@pytest.mark.slow
def test_rerun_submits_nothing(cluster, graded, examples):
    out, _ = graded
    before = _arrays(out)
    proc = _grade(cluster, examples, out, "--per-task", str(PER_TASK))
    assert f"reusing {len(list(out.glob('*/results.json')))} result(s)" in proc.stderr
    assert "submitted" not in proc.stderr
    assert _arrays(out) == before and not cluster.jobs()


@pytest.mark.slurm
@pytest.mark.slow
def test_batch_script_works_when_submitted_by_hand(cluster, graded, local):
    """sbatch the written script again, for one task: it regrades only what is missing."""
    out, _ = graded
    (array,) = _arrays(out)
    manifest = json.loads((array / "manifest.json").read_text())
    key = manifest["tasks"][1][0]["key"]
    (out / key / "results.json").unlink()
    job = cluster.run("sbatch", "--parsable", "--array=1", str(array / "grade.sbatch")).stdout
    _wait_gone(cluster, job.strip())
    assert _scores(out, {key}) == {key: local[key]}
    log = (array / "logs" / "1.out").read_text()
    assert f"task 1: 1 of {len(manifest['tasks'][1])} submission(s) to grade" in log


@pytest.mark.slurm
@pytest.mark.slow
def test_cancelled_task_is_reported_and_a_rerun_completes_it(cluster, examples, local, tmp_path):
    subs = tmp_path / "subs"
    subs.mkdir()
    for name in ("solution", "blank"):
        shutil.copy(examples / f"{name}.ipynb", subs)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "tensorgrade", "grade", str(subs), "-a", "01_tensors", "-o"]
    cmd += [str(out), "--backend", "slurm", "--mem", "1G", "-q", "--per-task", "1"]
    first = subprocess.Popen(cmd, cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not list((out / ".slurm").glob("*/job.json")):
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.1)
        (array,) = _arrays(out)
        job = _job(array)
        cancelled = json.loads((array / "manifest.json").read_text())["tasks"][1][0]["key"]
        while f"{job}_1" not in cluster.run("squeue", "-h", "-t", "R", "-o", "%i").stdout:
            assert time.monotonic() < deadline, cluster.jobs()
            time.sleep(0.1)
        cluster.run("scancel", f"{job}_1")  # while it grades: Slurm remembers it CANCELLED
        stdout, stderr = first.communicate(timeout=600)
    finally:
        first.kill()
    assert first.returncode == 3, stdout + stderr  # staff must look
    assert "CANCELLED" in stderr and "not graded because their Slurm task ended" in stderr
    res = read_results_json(out / cancelled / "results.json")
    assert res.status == "ungradable" and task_end(res) is TaskEnd.CANCELLED
    assert res.tests and all(t.score == 0 and t.failure == "not_run" for t in res.tests)
    rows = {r["submission"]: r for r in csv.DictReader((out / "grades.csv").open())}
    assert rows[cancelled]["status"] == "ungradable" and len(rows) == 2

    # the same command again: only the cancelled one is submitted (held here, and left) ...
    second = _grade(cluster, subs, out, "--per-task", "1", "--no-wait", "--sbatch=--hold")
    assert (
        "reusing 1 result(s)" in second.stderr and "1 submission(s) in 1 task(s)" in second.stderr
    )
    held = _job(_arrays(out)[-1])
    # ... and once more: nothing submitted, the array waited for, everything graded
    third = subprocess.Popen(cmd, cwd=ROOT, env=cluster.env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        seen = []
        for line in third.stderr:
            seen.append(line)
            if "already queued or running" in line:
                break
        assert f"in array(s) {held}" in seen[-1], seen
        cluster.run("scontrol", "release", held)
        stdout, stderr = third.communicate(timeout=600)
    finally:
        third.kill()
    assert third.returncode == 0, stdout + "".join(seen) + stderr
    assert "submitted" not in "".join(seen) + stderr
    assert _scores(out) == {k: local[k] for k in ("solution", "blank")}
    assert len(_arrays(out)) == 2 and not cluster.jobs()


@pytest.mark.slurm
@pytest.mark.slow
def test_two_arrays_at_once_do_not_disturb_each_other(cluster, examples, local, tmp_path):
    mutants = sorted(p.stem for p in examples.glob("mutant-*.ipynb"))
    picks = {"x": ("solution", mutants[0]), "y": ("blank", mutants[-1])}
    procs = {}
    for name, keys in picks.items():
        subs = tmp_path / f"subs-{name}"
        subs.mkdir()
        for k in keys:
            shutil.copy(examples / f"{k}.ipynb", subs)
        cmd = [sys.executable, "-m", "tensorgrade", "grade", str(subs), "-a", "01_tensors"]
        cmd += ["-o", str(tmp_path / name), "--backend", "slurm", "--mem", "1G", "-q"]
        procs[name] = subprocess.Popen(
            [*cmd, "--per-task", "2"], cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    for p in procs.values():
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stdout + stderr
    jobs = set()
    for name, keys in picks.items():
        out = tmp_path / name
        assert _scores(out) == {k: local[k] for k in keys}
        rows = list(csv.DictReader((out / "grades.csv").open()))
        assert sorted(r["submission"] for r in rows) == sorted(keys)
        (array,) = _arrays(out)
        jobs.add(_job(array))
    assert len(jobs) == 2
