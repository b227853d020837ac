"""Build pipeline and command line: reproducible builds, stale detection, no leaks to students."""

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ASSIGNMENT_IDS

from tensorgrade.build import build_one, stale_files
from tensorgrade.cli import make_parser
from tensorgrade.course import get_assignments
from tensorgrade.notebooks import read


def _tg(*args, cwd, env=None):
    return subprocess.run(
        [sys.executable, "-m", "tensorgrade", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
    )


COMMANDS = [
    [],
    ["build"],
    ["grade"],
    ["audit"],
    ["examples"],
    ["doctor"],
    ["release"],
    ["report"],
    ["export"],
    ["lms"],
    ["lms", "canvas"],
    ["lms", "canvas", "push"],
    ["gradescope"],
    ["gradescope", "run"],
    ["gradescope", "zip"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "tensorgrade")
def test_every_command_has_help(command, root):
    proc = _tg(*command, "--help", cwd=root)
    assert proc.returncode == 0
    assert "usage: tensorgrade" in proc.stdout
    assert len(proc.stdout) > 200, "help should explain the command"


def test_every_subcommand_is_covered_by_the_help_test():
    sub = next(a for a in make_parser()._actions if a.dest == "command")
    assert set(sub.choices) == {c[0] for c in COMMANDS if c}


def test_unknown_assignment_is_a_clear_error(root):
    proc = _tg("build", "99_nope", cwd=root)
    assert proc.returncode == 2
    assert "unknown assignment id(s): 99_nope" in proc.stderr
    assert "01_tensors" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("aid", ASSIGNMENT_IDS)
def test_committed_student_notebooks_are_fresh_and_builds_reproducible(aid, root, built_course):
    (a,) = get_assignments(root, [aid])
    first = build_one(a, write_dist=False)
    # the second build is built_course's (`tensorgrade build` in a copy of the course,
    # which wrote the student files it made there): two builds, one of them shared
    second = built_course[aid]
    for rel, content in first.student_files.items():
        path = second.student_dir / rel
        assert path.read_bytes() == content, f"two builds must be byte-identical: {rel} differs"
    assert stale_files(first) == [], "run `tensorgrade build` and commit assignments/"
    tracked = subprocess.run(
        ["git", "ls-files", str(a.student_dir)], cwd=root, capture_output=True, text=True
    ).stdout.split()
    extra = {Path(p).relative_to(a.student_dir.relative_to(root)).as_posix() for p in tracked}
    extra -= set(first.student_files)
    assert not extra, f"files in assignments/{aid}/ that the build does not make: {sorted(extra)}"


@pytest.mark.slow
@pytest.mark.build  # runs otter assign on a copy of the course (seconds)
def test_build_check_names_a_stale_notebook(root, tmp_path):
    copy = tmp_path / "course"
    shutil.copytree(root / "solutions", copy / "solutions")
    shutil.copytree(root / "assignments", copy / "assignments")
    nb = copy / "assignments" / "01_tensors" / "01_tensors.ipynb"
    data = json.loads(nb.read_text())
    data["cells"][1]["source"] = "edited by hand"
    nb.write_text(json.dumps(data))
    env = {**__import__("os").environ, "TENSORGRADE_ROOT": str(copy)}
    proc = _tg("build", "--check", "01_tensors", cwd=tmp_path, env=env)
    assert proc.returncode == 1
    assert "stale: assignments/01_tensors/01_tensors.ipynb" in proc.stderr
    assert json.loads(nb.read_text())["cells"][1]["source"] == "edited by hand", (
        "--check writes nothing"
    )


def _solution_lines(master) -> set[str]:
    lines, inside = set(), False
    for cell in master.cells:
        if cell.cell_type != "code":
            continue
        for line in cell.source.splitlines():
            s = line.strip()
            if s.endswith("# END SOLUTION"):
                inside = False
            elif inside and len(s) > 12 and not s.startswith("#"):
                lines.add(s)
            elif s.endswith("# BEGIN SOLUTION"):
                inside = True
            elif s.endswith("# SOLUTION"):
                lines.add(s[: -len("# SOLUTION")].strip())
    return lines


def _hidden_test_names(master) -> set[str]:
    names = set()
    for cell in master.cells:
        if cell.cell_type == "code" and cell.source.lstrip().upper().startswith("# HIDDEN"):
            tree = ast.parse(cell.source)
            names |= {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    return names


@pytest.mark.parametrize("aid", ASSIGNMENT_IDS)
def test_student_notebook_has_no_solutions_or_hidden_tests(aid, root):
    (a,) = get_assignments(root, [aid])
    master = read(a.master)
    student = read(a.student)
    text = a.student.read_text()
    sol = _solution_lines(master)
    hidden = _hidden_test_names(master)
    assert sol and hidden, "the master should have solutions and hidden tests to check against"
    # Code only: the teaching text may name an API call that a solution also uses.
    code = "\n".join(c.source for c in student.cells if c.cell_type == "code")
    leaked = [line for line in sol if line in code]
    assert not leaked, f"solution code in the student notebook: {leaked[:3]}"
    leaked_tests = [n for n in hidden if re.search(rf"\b{n}\b", text)]
    assert not leaked_tests, f"hidden tests in the student notebook: {leaked_tests}"
    assert "hidden=True" not in text
