"""`tensorgrade build`: master notebook -> student notebook (committed) + dist/<id>/ (ignored).

otter assign does the authoring transform; we make its output reproducible and lay it out where
the rest of tensorgrade looks for it. Before otter runs, the master is checked for tests that look
hidden but that otter would publish; after it runs, the student notebook gets a first cell that
sets it up in Google Colab (see docs/release.md).
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import nbformat
import yaml

from . import notebooks
from .course import Assignment
from .errors import TensorgradeError
from .zips import normalise_zip


class BuildError(TensorgradeError, RuntimeError):
    """An assignment cannot be built; exit status 1."""


@dataclass
class BuildOutput:
    assignment: Assignment
    student_files: dict[str, bytes]  # relative path under assignments/<id>/ -> content


# --- what the master says -------------------------------------------------------------------------

# A comment line that marks a test hidden: `# HIDDEN`, `#hidden`, `## Hidden test` ...
_HIDDEN_MARKER = re.compile(r"^\s*#+\s*hidden\b", re.IGNORECASE)
# Keys of the ASSIGNMENT CONFIG that are ours, not otter's (otter refuses unknown keys).
OWN_CONFIG_KEYS = ("release_url",)


@dataclass(frozen=True)
class MasterTest:
    """One test cell of a master notebook, and whether it is hidden."""

    question: str
    cell: int  # index of the cell in the master
    name: str  # the test function's name ("" if the cell defines none)
    hidden: bool  # as otter reads it: the marker on the cell's first line, or a test config
    marker_line: int  # 1-based line of a hidden marker among the leading comment lines; 0: none


def _otter_hidden(lines: list[str]) -> bool:
    """Exactly otter 7.0.0's rule (otter/assign/tests_manager.py, ``read_test``)."""
    from otter.assign.tests_manager import BEGIN_TEST_CONFIG_REGEX, END_TEST_CONFIG_REGEX

    first = lines[0] if lines else ""
    hidden = first.lstrip().startswith("#") and bool(
        re.search(r"\bhidden\b", first, flags=re.IGNORECASE)
    )
    if re.match(BEGIN_TEST_CONFIG_REGEX, first, flags=re.IGNORECASE):
        end = next(
            (
                i
                for i, ln in enumerate(lines)
                if re.match(END_TEST_CONFIG_REGEX, ln, flags=re.IGNORECASE)
            ),
            len(lines),
        )
        config = yaml.safe_load("\n".join(lines[1:end])) or {}
        if isinstance(config, dict):
            hidden = bool(config.get("hidden", hidden))
    return hidden


def _marker_line(lines: list[str]) -> int:
    """The line (1-based) of a hidden marker among the cell's leading blank and comment lines."""
    for i, ln in enumerate(lines, start=1):
        if not ln.strip():
            continue
        if not ln.lstrip().startswith("#"):
            return 0
        if _HIDDEN_MARKER.match(ln):
            return i
    return 0


def _test_name(source: str) -> str:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return ""
    return next((n.name for n in tree.body if isinstance(n, ast.FunctionDef)), "")


def master_tests(nb: nbformat.NotebookNode) -> list[MasterTest]:
    """Every test cell of a master notebook (inside ``# BEGIN TESTS`` ... ``# END TESTS``)."""
    from otter.assign.blocks import BlockType, get_cell_config, is_block_boundary_cell

    tests: list[MasterTest] = []
    question, in_tests = "", False
    for i, cell in enumerate(nb.cells):
        if is_block_boundary_cell(cell, BlockType.QUESTION):
            config = get_cell_config(cell)
            question = str(config.get("name", "")) if isinstance(config, dict) else ""
        elif is_block_boundary_cell(cell, BlockType.TESTS):
            in_tests = True
        elif is_block_boundary_cell(cell, BlockType.TESTS, end=True):
            in_tests = False
        elif in_tests and cell.cell_type == "code" and cell.source.strip():
            lines = re.split("\r?\n", cell.source)
            tests.append(
                MasterTest(
                    question=question,
                    cell=i,
                    name=_test_name(cell.source),
                    hidden=_otter_hidden(lines),
                    marker_line=_marker_line(lines),
                )
            )
    return tests


def check_hidden_markers(a: Assignment, nb: nbformat.NotebookNode) -> None:
    """Refuse a test that looks hidden (a `# HIDDEN` comment) but that otter would publish.

    otter reads the marker on a test cell's first line only: after a blank line or another comment
    it is an ordinary comment, and the test would go into the student notebook.
    """
    for t in master_tests(nb):
        if t.marker_line and not t.hidden:
            what = f"test {t.name}" if t.name else "a test"
            raise BuildError(
                f"{a.id}: question {t.question or '?'}, {what} (cell {t.cell} of the master): "
                f"`# HIDDEN` is on line {t.marker_line} of the cell, but otter reads it only on "
                "the first line, so this test would be published in the student notebook. Put "
                "`# HIDDEN` on the cell's first line (no blank line or comment above it)."
            )


def assignment_config(nb: nbformat.NotebookNode) -> tuple[int, dict]:
    """The index and content of the master's ``# ASSIGNMENT CONFIG`` cell ((-1, {}) if none)."""
    from otter.assign.blocks import get_cell_config, is_assignment_config_cell

    for i, cell in enumerate(nb.cells):
        if is_assignment_config_cell(cell):
            config = get_cell_config(cell)
            return i, config if isinstance(config, dict) else {}
    return -1, {}


def release_url(a: Assignment, nb: nbformat.NotebookNode) -> str:
    """``release_url`` from the master's config: where the course release is published, as the
    address of a zip (what Colab downloads). "" when not set."""
    _, config = assignment_config(nb)
    url = config.get("release_url", "") or ""
    if not isinstance(url, str) or (
        url and not re.match(r"^(https?|file)://\S+$", url) and not url.startswith("/")
    ):
        raise BuildError(
            f"{a.id}: release_url in the ASSIGNMENT CONFIG must be the address of the release's "
            f"zip (https://..., file://... or an absolute path), got {url!r}"
        )
    return url


def _without_own_keys(a: Assignment, nb: nbformat.NotebookNode) -> nbformat.NotebookNode | None:
    """The master without our own config keys (otter refuses them); None if it has none."""
    i, config = assignment_config(nb)
    if not any(k in config for k in OWN_CONFIG_KEYS):
        return None
    own = re.compile(rf"^({'|'.join(OWN_CONFIG_KEYS)})\s*:")
    cell = nb.cells[i]
    cell.source = "\n".join(ln for ln in cell.source.splitlines() if not own.match(ln))
    _, left = assignment_config(nb)
    if any(k in left for k in OWN_CONFIG_KEYS):
        raise BuildError(f"{a.id}: write {', '.join(OWN_CONFIG_KEYS)} on one line of the config")
    return nb


# --- otter assign ---------------------------------------------------------------------------------


def run_otter_assign(a: Assignment, out: Path) -> None:
    """Run otter assign on the master into ``out`` (tests are not run here: our suite does that)."""
    if not a.master.is_file():
        raise BuildError(f"{a.id}: master notebook not found at {a.master}")
    master = a.master
    stripped = _without_own_keys(a, notebooks.read(a.master))
    if stripped is not None:
        # otter names its output after the master and reads files next to it: give it a folder
        # that mirrors the master's, with the master minus our keys
        src = out.parent / "master"
        src.mkdir()
        for p in a.master.parent.iterdir():
            if p.name != a.master.name:
                (src / p.name).symlink_to(p.resolve())
        master = src / a.master.name
        master.write_text(nbformat.writes(stripped), encoding="utf-8")
    cmd = [sys.executable, "-m", "otter", "assign", "--no-pdfs", "--no-run-tests"]
    proc = subprocess.run(
        [*cmd, str(master), str(out)], capture_output=True, text=True, cwd=master.parent
    )
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise BuildError(f"{a.id}: otter assign failed:\n" + "\n".join(tail))


# --- the Colab cell --------------------------------------------------------------------------------

SETUP_TAG = "tensorgrade-setup"

_SETUP_CELL = """\
# Google Colab only (does nothing elsewhere): download the course release, install its tools
# (otter-grader, the course's test helpers) and this assignment's public checks.
import sys

if "google.colab" in sys.modules:
    import importlib, json, os, pathlib, subprocess, urllib.request, zipfile

    ASSIGNMENT = {aid}
    RELEASE_URL = {url}  # the zip of the course release
    url = os.environ.get("TENSORGRADE_RELEASE_URL") or RELEASE_URL
    if not url:
        raise RuntimeError("this notebook does not say where its course is published "
                           "(release_url): open it from the course release your instructor gave")
    course = pathlib.Path.home() / "tensorgrade-course"
    pattern = f"**/assignments/{{ASSIGNMENT}}/{{ASSIGNMENT}}.ipynb"
    if not any(course.glob(pattern)):
        archive = url if url.startswith("/") else urllib.request.urlretrieve(url)[0]
        with zipfile.ZipFile(archive) as z:
            z.extractall(course)
    notebook = next(course.glob(pattern))
    try:
        import otter, tensorgrade.testing  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", str(notebook.parents[2])],
                       check=True)
        importlib.invalidate_caches()
    os.chdir(notebook.parent)  # the assignment's folder: its data, and tests/ for otter
    os.makedirs("tests", exist_ok=True)
    meta = json.loads(notebook.read_text(encoding="utf-8"))["metadata"]
    for question, test in meta["otter"]["tests"].items():
        pathlib.Path("tests", f"{{question}}.py").write_text(test, encoding="utf-8")
    print(f"Colab: {{ASSIGNMENT}} is set up in {{notebook.parent}}")"""


def setup_cell_source(aid: str, url: str) -> str:
    """The student notebook's first cell: in Colab, installs what the notebook needs."""
    return _SETUP_CELL.format(aid=json.dumps(aid), url=json.dumps(url))


def _add_setup_cell(nb: nbformat.NotebookNode, a: Assignment, url: str) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(setup_cell_source(a.id, url))
    cell.metadata.update({"deletable": False, "editable": False, "tags": [SETUP_TAG]})
    nb.cells.insert(0, cell)
    return nb


# --- build ----------------------------------------------------------------------------------------


def _student_files(student_out: Path, a: Assignment, url: str) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for p in sorted(student_out.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(student_out).as_posix()
        if p.suffix == ".ipynb":
            nb = notebooks.read(p)
            if rel == f"{a.id}.ipynb":
                nb = _add_setup_cell(nb, a, url)
            files[rel] = notebooks.dumps(notebooks.normalise(nb)).encode()
        else:
            files[rel] = p.read_bytes()
    if f"{a.id}.ipynb" not in files:
        raise BuildError(f"{a.id}: otter assign produced no student notebook")
    return files


def _check_published_tests(a: Assignment, master: nbformat.NotebookNode, student: bytes) -> None:
    """After otter: no test that the master marks hidden is among the student notebook's tests."""
    public = json.loads(student).get("metadata", {}).get("otter", {}).get("tests", {})
    text = "\n".join(str(v) for v in public.values())
    for t in master_tests(master):
        if (t.hidden or t.marker_line) and t.name and re.search(rf"\bdef {t.name}\b", text):
            raise BuildError(
                f"{a.id}: question {t.question}, hidden test {t.name} reached the student "
                "notebook; check how the test cell marks it hidden"
            )


def build_one(a: Assignment, *, write_dist: bool = True) -> BuildOutput:
    if not a.master.is_file():
        raise BuildError(f"{a.id}: master notebook not found at {a.master}")
    master = notebooks.read(a.master)
    check_hidden_markers(a, master)
    url = release_url(a, master)
    with tempfile.TemporaryDirectory(prefix=f"tg-build-{a.id}-") as tmp:
        out = Path(tmp) / "out"
        run_otter_assign(a, out)
        student = _student_files(out / "student", a, url)
        _check_published_tests(a, master, student[f"{a.id}.ipynb"])
        if write_dist:
            _write_dist(a, out / "autograder")
    return BuildOutput(a, student)


def _write_dist(a: Assignment, ag_out: Path) -> None:
    zips = sorted(ag_out.glob("*.zip"))
    if len(zips) != 1:
        raise BuildError(f"{a.id}: expected one autograder zip from otter assign, got {len(zips)}")
    if a.dist.exists():
        shutil.rmtree(a.dist)
    (a.dist / "solution").mkdir(parents=True)
    shutil.copyfile(zips[0], a.autograder_zip)
    normalise_zip(a.autograder_zip)  # otter stamps build times: keep rebuilds byte-identical
    for p in ag_out.iterdir():
        if p.is_file() and p.suffix != ".zip":
            shutil.copyfile(p, a.dist / "solution" / p.name)
    sol = notebooks.read(a.dist / "solution" / f"{a.id}.ipynb")
    notebooks.write(notebooks.normalise(sol), a.solution)
    a.tests_dir.mkdir()
    with zipfile.ZipFile(a.autograder_zip) as z:
        for name in z.namelist():
            if name.startswith("tests/") and name.endswith(".py"):
                (a.tests_dir / Path(name).name).write_bytes(z.read(name))


def stale_files(built: BuildOutput) -> list[Path]:
    """Committed student files that differ from (or are missing compared to) a fresh build."""
    stale = []
    for rel, content in built.student_files.items():
        path = built.assignment.student_dir / rel
        if not path.is_file() or path.read_bytes() != content:
            stale.append(path)
    return stale


def write_student(built: BuildOutput) -> list[Path]:
    written = []
    for rel, content in built.student_files.items():
        path = built.assignment.student_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_bytes() != content:
            path.write_bytes(content)
            written.append(path)
    return written
