"""Every assignment, end to end: the bar each one must meet.

- with the trusted engine: solution 100/100, untouched student notebook 0, each mutant loses points
  on exactly the questions it names, every hidden test fails at least one mutant;
- on honest submissions (solution, blank, the automatic non-answers and one mutant per question)
  the trusted engine gives exactly the otter engine's per-question scores. otter costs several
  times the trusted engine per notebook, so CI compares a sample that touches every question;
  `tensorgrade audit ID --engine otter` compares all of them (run it when a question changes);
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

from tensorgrade.audit import audit, format_report, grade_submissions, lost_questions
from tensorgrade.grading import GradeOptions
from tensorgrade.mutants import load_mutants, nonanswer_submissions, submissions
from tensorgrade.testfiles import load_tests

pytestmark = pytest.mark.slow

# One torch thread per otter kernel. `otter run` starts a kernel per notebook whose torch takes
# every core; with two kernels at once on CI's two cores, their OpenMP threads spin-wait on each
# other and each notebook costs about twice the CPU (measured: 4 notebooks of 02_autodiff with
# -j 2 took 79 CPU-s with the default threads, 39 CPU-s with one). The trusted engine's sandboxes
# and judge workers already run one thread each; scores do not depend on the thread count.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def reports():
    """Trusted-engine audit reports by assignment id, each computed once for the module."""
    done = {}

    def report(a):
        if a.id not in done:
            done[a.id] = audit(a, engine="trusted", jobs=2)
        return done[a.id]

    return report


def otter_sample(a) -> dict[str, bytes]:
    """The solution, the blank notebook, the automatic non-answers, and for each question the first
    mutant (in mutants.yml's order) that must lose points on it."""
    subs = submissions(a)
    subs.update(nonanswer_submissions(a, load_tests(a.tests_dir)))
    chosen: dict[str, str] = {}
    for m in load_mutants(a.mutants):
        for q in m.loses:
            chosen.setdefault(q, f"mutant-{m.name}")
    keep = set(chosen.values())
    return {k: v for k, v in subs.items() if not k.startswith("mutant-") or k in keep}


@pytest.mark.sandbox
@pytest.mark.parametrize("aid", ASSIGNMENT_IDS)
def test_audit_with_trusted_engine(aid, built_course, reports):
    report = reports(built_course[aid])
    print(format_report(report))
    assert report.ok, format_report(report)
    assert len(report.results) >= 2 + 2 * len(report.results["solution"].question_scores())
    assert all(r.isolation_level in ("full", "reduced") for r in report.results.values())


@pytest.mark.sandbox
@pytest.mark.parametrize("aid", ASSIGNMENT_IDS)
def test_same_scores_as_otter_on_honest_work(aid, built_course, reports):
    a = built_course[aid]
    trusted = reports(a).results
    sample = otter_sample(a)
    with mock.patch.dict(os.environ, ONE_THREAD):
        otter = grade_submissions(a, sample, GradeOptions(engine="otter", jobs=2, progress=False))
    for name, r in otter.items():  # per-submission times, for a slow CI run
        print(f"{name:<50} {r.score:6.2f}  {r.execution_time:6.1f} s")
    # the sample makes otter grade a lost point on every question
    lost = {
        q for name in sample if name.startswith("mutant-") for q in lost_questions(trusted[name])
    }
    assert lost == set(trusted["solution"].question_scores())
    differ = {
        name: (trusted[name].question_scores(), otter[name].question_scores())
        for name in sample
        if trusted[name].question_scores() != otter[name].question_scores()
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
