"""Every assignment, end to end: the bar each one must meet.

- solution 100/100, untouched student notebook 0, each mutant loses points on exactly the questions
  it names, every hidden test fails at least one mutant (`tensorgrade audit`);
- the student notebook runs top to bottom on a CPU with its blanks unfilled, and its public checks
  answer with readable messages.
"""

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ASSIGNMENT_IDS
from tensorgrade.audit import audit, format_report

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("aid", ASSIGNMENT_IDS)
def test_audit(aid, built):
    report = audit(built[aid], engine="otter", jobs=2)
    print(format_report(report))
    assert report.ok, format_report(report)
    assert len(report.results) >= 2 + 2 * len(report.results["solution"].question_scores())


@pytest.mark.parametrize("aid", ASSIGNMENT_IDS)
def test_blank_student_notebook_runs_top_to_bottom(aid, built, tmp_path):
    a = built[aid]
    nb = nbformat.read(a.student, as_version=4)
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(a.student_dir)}}
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
