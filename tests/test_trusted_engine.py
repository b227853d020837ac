"""The trusted engine on honest and broken submissions: determinism, bad input, reduced isolation."""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import zipfile

import nbformat
import pytest

from sandboxing import namespaces_here, uid_processes
from tensorgrade.grading import GradeOptions, file_sha256, grade_one, load_limits
from tensorgrade.judge import engine, sandbox
from tensorgrade.judge.source import definition_source
from tensorgrade.results import NOT_RUN
from tensorgrade.root.uids import BASE_UID
from tensorgrade.submissions import Submission
from tensorgrade.testfiles import load_tests

# Grading a whole notebook starts sandboxes and takes seconds: those tests are marked one by one
# (slow, sandbox); the rest (bad input refused before any sandbox starts, the judge's own checks)
# are fast.


@pytest.fixture(scope="module")
def a1(built_course):
    a = built_course["01_tensors"]
    return a, load_tests(a.tests_dir), file_sha256(a.autograder_zip)


def _grade_file(a1, path):
    a, specs, ag = a1
    return grade_one(a, specs, Submission(path.stem, path), GradeOptions(), ag, slot=3)


@pytest.mark.slow
@pytest.mark.sandbox
def test_solution_scores_the_same_in_five_regrades(a1, tmp_path):
    a, _, _ = a1
    path = tmp_path / "ada.ipynb"
    path.write_bytes(a.solution.read_bytes())
    runs = [_grade_file(a1, path) for _ in range(5)]
    assert all(r.score == 100 for r in runs)
    outcomes = {tuple((t.name, t.passed, t.score) for t in r.tests) for r in runs}
    assert len(outcomes) == 1


def _nb_without_kernelspec(a) -> bytes:
    nb = json.loads(a.solution.read_text())
    del nb["metadata"]["kernelspec"]
    return json.dumps(nb).encode()


def _nb_of_other_assignment(a) -> bytes:
    nb = nbformat.read(a.solution, as_version=4)
    nb.cells[0].source = nb.cells[0].source.replace("01_tensors.ipynb", "02_autodiff.ipynb")
    return nbformat.writes(nb).encode()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _huge_outputs(a) -> bytes:
    nb = nbformat.read(a.solution, as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code")
    cell.outputs = [nbformat.v4.new_output("stream", text="x" * (21 * 2**20))]
    return nbformat.writes(nb).encode()


BAD = {
    "invalid_json.ipynb": (lambda a: b"{oops", "not valid notebook JSON"),
    "truncated.ipynb": (lambda a: a.solution.read_bytes()[:5000], "truncated"),
    "v3.ipynb": (lambda a: b'{"nbformat": 3, "worksheets": [], "cells": []}', "format v3"),
    "no_kernelspec.ipynb": (_nb_without_kernelspec, "no kernelspec"),
    "latin1.ipynb": (lambda a: '{"cells": ["é"]}'.encode("latin-1"), "not UTF-8"),
    "huge_outputs.ipynb": (_huge_outputs, "MiB"),
    "other_assignment.ipynb": (_nb_of_other_assignment, "notebook of 02_autodiff"),
    "traversal.zip": (
        lambda a: _zip({"../../evil.ipynb": a.solution.read_bytes()}),
        "unsafe path",
    ),
    "bomb.zip": (lambda a: _zip({"nb.ipynb": b"0" * (30 * 2**20)}), "zip bomb"),
    "two_notebooks.zip": (
        lambda a: _zip({"a.ipynb": a.solution.read_bytes(), "b.ipynb": a.student.read_bytes()}),
        "2 notebooks",
    ),
    "no_notebook.zip": (lambda a: _zip({"readme.txt": b"hi"}), "no notebook"),
    "not_a_zip.zip": (lambda a: b"PK\x03\x04 broken", "not a readable zip"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_is_ungradable_with_a_reason(name, a1, tmp_path):
    a, specs, _ = a1
    make, reason = BAD[name]
    path = tmp_path / name
    path.write_bytes(make(a))
    r = _grade_file(a1, path)
    assert r.status == "ungradable"
    assert reason in r.reason
    assert len(r.tests) == len(specs) and r.score == 0


@pytest.mark.slow
@pytest.mark.sandbox
def test_zip_with_one_notebook_is_graded(a1, tmp_path):
    a, _, _ = a1
    path = tmp_path / "ada.zip"
    path.write_bytes(_zip({"ada/01_tensors.ipynb": a.solution.read_bytes(), "ada/notes.txt": b""}))
    assert _grade_file(a1, path).score == 100


def _grade_solution_directly(a, specs, **kwargs):
    return engine.grade(
        a.solution.read_bytes(),
        "ada.ipynb",
        a.id,
        specs,
        limits=sandbox.Limits(),
        files_from=a.student_dir,
        **kwargs,
    )


@pytest.mark.slow
@pytest.mark.sandbox
@pytest.mark.root
def test_without_namespaces_root_still_gives_the_student_a_uid_of_its_own(
    a1, monkeypatch, capsys, interpreter_reachable_by_others
):
    """Where namespaces can't be had (Docker's defaults, maybe Gradescope) or are refused with
    --isolation reduced, a root grader still runs the student's code as a fresh uid of its own,
    never as root or the judge, under Landlock and seccomp; the result says which layers held."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    a, specs, _ = a1
    monkeypatch.setattr(engine, "_warned_reduced", False)
    nb = nbformat.read(a.solution, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import os\nprint('student uid', os.getuid())"))
    r = engine.grade(
        nbformat.writes(nb).encode(),
        "ada.ipynb",
        a.id,
        specs,
        limits=sandbox.Limits(),
        files_from=a.student_dir,
        isolation="reduced",
    )
    assert r.score == 100
    iso = r.isolation
    assert iso["level"] == "reduced"
    assert iso["uid"] and iso["landlock"] and iso["seccomp"]
    assert not (iso["net"] or iso["mount"] or iso["pid"] or iso["ipc"])
    assert "reduced" in iso["errors"]["namespaces"]
    assert r.sandbox_uids and min(r.sandbox_uids) >= BASE_UID
    assert f"student uid {r.sandbox_uids[0]}" in r.student_output
    assert all(uid_processes(u) == [] for u in r.sandbox_uids)
    assert "isolation reduced" in capsys.readouterr().err
    doc = json.loads(json.dumps(r.to_gradescope()))
    assert doc["extra_data"]["isolation"] == iso


@pytest.mark.slow
@pytest.mark.sandbox
@pytest.mark.root
def test_full_isolation_is_recorded_when_root(a1, tmp_path):
    if not namespaces_here():
        pytest.skip("needs root")
    a, _, _ = a1
    path = tmp_path / "ada.ipynb"
    path.write_bytes(a.solution.read_bytes())
    r = _grade_file(a1, path)
    assert r.isolation["level"] == "full", r.isolation
    assert all(r.isolation[k] for k in ("uid", "net", "mount", "pid", "ipc", "landlock", "seccomp"))
    assert set(r.timings) == {"startup", "cells", "tests", "teardown"}
    assert abs(sum(r.timings.values()) - r.execution_time) < 0.01


@pytest.mark.slow
@pytest.mark.sandbox
def test_student_output_is_kept_and_capped(a1, tmp_path):
    a, _, _ = a1
    nb = nbformat.read(a.student, as_version=4)
    nb.cells.append(
        nbformat.v4.new_code_cell("print('hello from the student')\nprint('y' * 10**6)")
    )
    path = tmp_path / "chatty.ipynb"
    path.write_text(nbformat.writes(nb))
    r = _grade_file(a1, path)
    assert "hello from the student" in r.student_output
    assert len(r.student_output) < 60_000
    assert "more characters not shown" in r.student_output


@pytest.mark.slow
@pytest.mark.sandbox
def test_the_students_figures_are_kept_as_pngs(a1, tmp_path):
    a, _, _ = a1
    nb = nbformat.read(a.student, as_version=4)
    plot = (
        "import matplotlib.pyplot as plt\nplt.plot([0, 1], [1, 0]); plt.title('mine'); plt.show()"
    )
    nb.cells.append(nbformat.v4.new_code_cell(plot))
    path = tmp_path / "plotter.ipynb"
    path.write_text(nbformat.writes(nb))
    r = _grade_file(a1, path)
    cell = sum(1 for c in nb.cells if c.cell_type == "code")
    assert r.figures and r.figures[-1]["cell"] == cell
    assert base64.b64decode(r.figures[-1]["png"]).startswith(b"\x89PNG")
    assert len(r.figures) <= engine._MAX_FIGURES


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">II", width, height) + b"\x08\x06\x00\x00\x00"
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\x00" * 4


def test_the_judge_keeps_only_real_bounded_pngs():
    png = base64.b64encode(_png_header(432, 288) + b"0" * 100).decode()
    huge = base64.b64encode(_png_header(432, 288) + b"0" * engine._FIGURE_BYTES).decode()
    fake = base64.b64encode(b"<script>alert(1)</script>").decode()
    giga = base64.b64encode(_png_header(40000, 40000) + b"0" * 100).decode()  # 1.6 gigapixels
    headless = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"0" * 100).decode()
    sent = [png, huge, fake, giga, headless, "not base64!", 42, None, png]
    assert engine._checked_figures(sent, room=len(sent)) == [png, png]
    assert engine._checked_figures(sent, room=1) == [png]
    assert engine._checked_figures({"png": png}, room=8) == []


def test_definition_source_is_found_by_parsing_not_running():
    cells = [
        "%matplotlib inline\nimport torch\ndef f(x):\n    return x",
        "raise SystemExit  # never executed",
        "@staticmethod\ndef g():\n    pass\nclass f:\n    pass",
    ]
    assert definition_source(cells, "f").startswith("class f")
    assert definition_source(cells, "g").startswith("@staticmethod")
    assert definition_source(cells, "missing") is None


@pytest.mark.slow
@pytest.mark.sandbox
def test_a_sandbox_that_keeps_crashing_is_given_up_on(a1, tmp_path):
    a, specs, _ = a1
    nb = nbformat.read(a.student, as_version=4)
    names = sorted({p for s in specs for p in __import__("inspect").signature(s.func).parameters})
    crash = "import os\n" + "\n".join(f"def {n}(*a, **k):\n    os._exit(1)" for n in names)
    nb.cells.append(nbformat.v4.new_code_cell(crash))
    path = tmp_path / "crasher.ipynb"
    path.write_text(nbformat.writes(nb))
    r = _grade_file(a1, path)
    assert r.status == "graded" and r.score == 0 and len(r.tests) == len(specs)
    assert any("your code ended the sandbox" in t.output for t in r.tests)
    # given up after the limit of restarts: the remaining tests are not run (public ones say why)
    gave_up = f"your code ended the sandbox {load_limits(a).max_restarts + 1} times"
    assert any(gave_up in t.output for t in r.tests if not t.hidden), [t.output for t in r.tests]
    assert all(t.failure == NOT_RUN for t in r.tests if gave_up in t.output)
