"""Every assignment, end to end: the bar each one must meet.

- with the trusted engine: solution 100/100, untouched student notebook 0, each mutant loses points
  on exactly the questions it names, every hidden test fails at least one mutant;
- on every honest submission (solution, blank, mutants) the trusted engine gives exactly the otter
  engine's per-question scores;
- the student notebook runs top to bottom on a CPU with its blanks unfilled, and its public checks
  answer with readable messages.
"""

import os
import shutil
from unittest import mock

import nbformat
import pytest
from helpers import ASSIGNMENT_IDS
from nbclient import NotebookClient

from tensorgrade.audit import audit, format_report

pytestmark = pytest.mark.slow

# One torch thread per otter kernel. `otter run` starts a kernel per notebook whose torch takes
# every core; with two kernels at once on CI's two cores, their OpenMP threads spin-wait on each
# other and each notebook costs about twice the CPU (measured: 4 notebooks of 02_autodiff with
# -j 2 took 79 CPU-s with the default threads, 39 CPU-s with one). The trusted engine's sandboxes
# and judge workers already run one thread each; scores do not depend on the thread count.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def reports():
    """Audit reports by (assignment id, engine), each computed once for the module."""
    done = {}

    def report(a, engine):
        key = (a.id, engine)
        if key not in done:
            with mock.patch.dict(os.environ, ONE_THREAD if engine == "otter" else {}):
                done[key] = audit(a, engine=engine, jobs=2)
        return done[key]

    return report


@pytest.mark.sandbox
@pytest.mark.parametrize("aid", ASSIGNMENT_IDS)
def test_audit_with_trusted_engine(aid, built_course, reports):
    report = reports(built_course[aid], "trusted")
    print(format_report(report))
    assert report.ok, format_report(report)
    assert len(report.results) >= 2 + 2 * len(report.results["solution"].question_scores())
    assert all(r.isolation_level in ("full", "reduced") for r in report.results.values())


@pytest.mark.sandbox
@pytest.mark.parametrize("aid", ASSIGNMENT_IDS)
def test_same_scores_as_otter_on_honest_work(aid, built_course, reports):
    trusted = reports(built_course[aid], "trusted")
    otter = reports(built_course[aid], "otter")
    print(format_report(otter))  # per-submission times, for a slow CI run
    assert set(trusted.results) == set(otter.results)
    differ = {
        name: (trusted.results[name].question_scores(), otter.results[name].question_scores())
        for name in trusted.results
        if trusted.results[name].question_scores() != otter.results[name].question_scores()
    }
    assert not differ, f"per-question scores differ (trusted, otter): {differ}"


@pytest.mark.parametrize("aid", ASSIGNMENT_IDS)
def test_blank_student_notebook_runs_top_to_bottom(aid, built_course, tmp_path):
    a = built_course[aid]
    work = tmp_path / aid  # a copy: running a notebook leaves files (.OTTER_LOG) next to it
    shutil.copytree(a.student_dir, work)
    nb = nbformat.read(work / a.student.name, as_version=4)
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(work)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = "\n".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    )
    # grader.check ran for every question and explained the failure in words
    assert "failed" in outputs.lower()
    assert "Traceback" not in outputs
    assert "did you forget to `return` it?" in outputs or "not filled in" in outputs


@pytest.mark.parametrize("aid", ASSIGNMENT_IDS)
def test_solution_passes_every_public_check_in_a_kernel(aid, built_course, tmp_path):
    """What a student who solved everything sees: every grader.check passes in their own kernel."""
    a = built_course[aid]
    work = tmp_path / aid
    shutil.copytree(a.student_dir, work)
    shutil.copy(a.solution, work / a.student.name)
    nb = nbformat.read(work / a.student.name, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(work)}}
    ).execute()
    checks = [c for c in nb.cells if c.cell_type == "code" and "grader.check(" in c.source]
    assert checks
    for c in checks:
        text = "".join(
            o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in c.outputs
        )
        assert "All test cases passed" in text, f"{c.source.strip()}: {text[:500]}"
