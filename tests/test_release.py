"""`tensorgrade release`: what students receive holds no secret, and its routes work.

Fast tests check the release's content (against the masters, the built hidden tests in
dist/<id>/tests and every file of dist/), the authoring guards of build/audit/mutants, and the
Colab cell outside Colab. The tests marked `release` (also `slow`; they need a package index)
install the release the way its README says in a fresh venv and run notebooks in it, and run
notebooks in a stand-in for Google Colab that installs everything from the release's zip.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import nbformat
import pytest
import yaml

import tensorgrade
from conftest import ASSIGNMENT_IDS, ROOT
from tensorgrade.audit import structure_problems
from tensorgrade.build import SETUP_TAG, master_tests
from tensorgrade.course import get_assignments
from tensorgrade.mutants import Mutant, MutantError, apply_mutant
from tensorgrade.notebooks import read
from tensorgrade.release import ReleaseError, helper_modules
from tensorgrade.testfiles import load_tests

HELPERS = {
    "src/tensorgrade/__init__.py",
    "src/tensorgrade/testing.py",
    "src/tensorgrade/portable.py",
}
TOP = {
    ".gitignore",
    ".tensorgrade-release",
    "README.md",
    "requirements.txt",
    "student_env.yml",
    "pyproject.toml",
}


def _tg(*args, cwd=ROOT, env=None):
    return subprocess.run(
        [sys.executable, "-m", "tensorgrade", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
    )


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(folder).parts
    }


def _committed_student_files() -> dict[str, bytes]:
    tracked = subprocess.run(
        ["git", "ls-files", "assignments"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return {p: (ROOT / p).read_bytes() for p in tracked if (ROOT / p).is_file()}


def _course_copy(tmp_path: Path) -> Path:
    """A course of its own (for TENSORGRADE_ROOT) that a test may edit."""
    course = tmp_path / "course"
    for name in ("solutions", "assignments"):
        shutil.copytree(ROOT / name, course / name)
    shutil.copy(ROOT / "student_env.yml", course)
    return course


def _env(course: Path) -> dict[str, str]:
    return {**os.environ, "TENSORGRADE_ROOT": str(course)}


@pytest.fixture(scope="module")
def release(built, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("release") / "course"
    proc = _tg("release", "-o", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no solutions, no hidden tests" in proc.stdout
    return out


# --- what the release holds -----------------------------------------------------------------------


@pytest.mark.slow  # builds a whole release (every assignment): ~1 min, shared
def test_release_holds_the_student_course_and_nothing_else(release):
    files = _files(release)
    student = _committed_student_files()
    assert set(files) == TOP | HELPERS | set(student), sorted(set(files) ^ (TOP | HELPERS))
    for path, data in student.items():
        assert files[path] == data, f"{path} differs from the committed student file"
    assert {f"assignments/{a}/{a}.ipynb" for a in ASSIGNMENT_IDS} <= set(files)


def _solution_lines(master) -> set[str]:
    """Code lines of the master's solutions (written here again, independently of release.py)."""
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
    return {s for s in lines if len(s) > 12}


def _code_cells(master):
    """Each code cell of the master with whether it is a test (between BEGIN/END TESTS) and its
    first line in upper case."""
    inside = False
    for cell in master.cells:
        first = cell.source.lstrip().splitlines()[0].upper() if cell.source.strip() else ""
        if cell.cell_type == "raw" and first.startswith(("# BEGIN TESTS", "# END TESTS")):
            inside = first.startswith("# BEGIN TESTS")
        elif cell.cell_type == "code":
            yield cell, inside, first


def _public_test_cells(master) -> str:
    """The source of the master's public test cells (between BEGIN/END TESTS, no # HIDDEN)."""
    return "\n".join(
        c.source
        for c, test, first in _code_cells(master)
        if test and not first.startswith("# HIDDEN")
    )


def _given_code(master) -> str:
    """The code the master gives students as it is: code cells outside BEGIN/END TESTS, without
    their BEGIN/END SOLUTION regions."""
    out, solution = [], False
    for cell, test, _ in _code_cells(master):
        for line in [] if test else cell.source.splitlines():
            if line.strip().endswith("# BEGIN SOLUTION"):
                solution = True
            elif line.strip().endswith("# END SOLUTION"):
                solution = False
            elif not solution:
                out.append(line)
    return "\n".join(out)


def _searchable(path: str, data: bytes) -> str:
    """Where solution code could hide: code cells and public tests of a notebook, or the file."""
    text = data.decode("utf-8", "replace")
    if not path.endswith(".ipynb"):
        return text
    nb = json.loads(text)
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    tests = nb["metadata"].get("otter", {}).get("tests", {})
    return "\n".join(code + [str(t) for t in tests.values()])


@pytest.mark.slow  # builds a whole release (every assignment): ~1 min, shared
def test_release_holds_no_master_no_solution_no_hidden_test_nothing_of_dist(built, release):
    files = _files(release)
    masters = {aid: read(ROOT / "solutions" / aid / f"{aid}.ipynb") for aid in ASSIGNMENT_IDS}
    master_bytes = {(ROOT / "solutions" / a / f"{a}.ipynb").read_bytes() for a in ASSIGNMENT_IDS}

    # no master notebook: by content, by name, by otter's master-only cells
    assert not master_bytes & set(files.values())
    assert [p for p in files if p.endswith(".ipynb")] == [
        f"assignments/{a}/{a}.ipynb" for a in ASSIGNMENT_IDS
    ]
    for path, data in files.items():
        text = data.decode("utf-8", "replace")
        for marker in ("# BEGIN SOLUTION", "# END SOLUTION", "# ASSIGNMENT CONFIG", "hidden=True"):
            assert marker not in text, f"{path} holds {marker!r}"
        if path.endswith(".ipynb"):
            assert all(c["cell_type"] != "raw" for c in json.loads(text)["cells"]), path

    # no solution code: every solution line of every master, grepped in the release. Allowed:
    # a line that the master's own public tests contain (its author published it), a line that
    # some master gives students as it is (a generic loop header), and a line in a helper that is
    # a byte copy of tensorgrade's own module (public code by design).
    package = Path(tensorgrade.__file__).parent
    copies = {p for p in HELPERS - {"src/tensorgrade/__init__.py"}}
    for p in copies:
        assert files[p] == (package / Path(p).name).read_bytes(), f"{p} is not tensorgrade's"
    leaks, allowed = [], []
    given = "\n".join(_given_code(m) for m in masters.values())
    for aid, master in masters.items():
        sol = _solution_lines(master)
        assert sol, f"{aid}: the master should have solution lines to look for"
        public = _public_test_cells(master) + "\n" + given
        for path, data in files.items():
            text = _searchable(path, data)
            for line in sol:
                if line in text:
                    ok = line in public or path in copies
                    (allowed if ok else leaks).append((aid, path, line))
    assert not leaks, f"solution code in the release: {leaks[:5]}"
    print("solution lines that public tests or helpers hold:", allowed)

    # no hidden test: the name of every test marked hidden in the built test files
    hidden = {
        s.name for aid in ASSIGNMENT_IDS for s in load_tests(built[aid].tests_dir) if s.hidden
    }
    assert len(hidden) > 10
    for path, data in files.items():
        text = data.decode("utf-8", "replace")
        named = [n for n in hidden if re.search(rf"\b{n}\b", text)]
        assert not named, f"{path} names hidden tests {named[:5]}"

    # nothing of dist/: no file with the content of any file there, no zip, no test file
    dist = {
        hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (ROOT / "dist").rglob("*")
        if p.is_file()
    }
    ours = {hashlib.sha256(d).hexdigest(): p for p, d in files.items()}
    assert not dist & set(ours), [ours[h] for h in dist & set(ours)]
    assert not [p for p in files if p.endswith((".zip", "otter_config.json")) or "/tests/" in p]


@pytest.mark.slow  # builds a whole release (every assignment): ~1 min, shared
def test_helpers_are_only_what_public_checks_import(release):
    files = _files(release)
    assert {p for p in files if p.startswith("src/")} == HELPERS
    for path in HELPERS:
        tree = ast.parse(files[path])
        for node in ast.walk(tree):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = ["." * node.level + (node.module or "")]
            for mod in mods:
                assert not mod.startswith(".") and not mod.startswith("tensorgrade"), (
                    f"{path} imports {mod}: helpers must stand alone"
                )
    init = files["src/tensorgrade/__init__.py"].decode()
    assert f'__version__ = "{tensorgrade.__version__}"' in init
    pyproject = tomllib.loads(files["pyproject.toml"].decode())
    assert pyproject["project"]["name"] == "tensorgrade-student"
    assert pyproject["tool"]["setuptools"]["packages"] == ["tensorgrade"]
    deps = pyproject["project"]["dependencies"]
    assert "otter-grader==7.0.0" in deps and "torch>=2.4" in deps, deps
    assert not [d for d in deps if d.startswith("torch==")], "Colab must keep its own torch"


def test_helper_modules_are_read_from_the_imports(tmp_path):
    package = Path(tensorgrade.__file__).parent
    src = {"nb": ["from tensorgrade import testing as tg\nimport tensorgrade.portable"]}
    assert helper_modules(src, package) == ["portable", "testing"]
    assert helper_modules({"nb": ["from tensorgrade import __version__"]}, package) == []
    for bad in ("from tensorgrade import grading", "from tensorgrade.judge import engine"):
        with pytest.raises(ReleaseError, match="not for students"):
            helper_modules({"02_autodiff/02_autodiff.ipynb": [bad]}, package)


@pytest.mark.slow  # builds a whole release (every assignment): ~1 min, shared
def test_install_files_pin_torch_and_bring_jupyterlab(release):
    pin = next(
        ln.strip()
        for ln in (ROOT / "requirements" / "dev.txt").read_text().splitlines()
        if ln.startswith("torch==")
    )
    req = [
        ln.strip()
        for ln in (release / "requirements.txt").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert pin in req and "jupyterlab" in req and "otter-grader==7.0.0" in req, req
    assert req[-1] == ".", "the helpers install from the release folder"
    env = yaml.safe_load((release / "student_env.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pin in pip and "." in pip and "-e ." not in pip
    assert "jupyterlab" in env["dependencies"]


@pytest.mark.slow  # builds a whole release (every assignment): ~1 min, shared
def test_readmes_send_students_to_the_release(release):
    root_readme = (ROOT / "README.md").read_text()
    assert "tensorgrade release" in root_readme
    assert "git clone <this repository>" not in root_readme
    student = (release / "README.md").read_text()
    block = _pip_block(student)
    assert block[-1] == "jupyter lab"
    assert "conda env create -f student_env.yml" in student
    assert "Colab" in student and "jupyter lab" in student


@pytest.mark.slow  # builds a whole release (every assignment): ~1 min, shared
def test_release_zip_is_reproducible_and_holds_the_folder(release, tmp_path):
    for name in ("a", "b"):
        proc = _tg("release", "--zip", "-o", str(tmp_path / name / "course"))
        assert proc.returncode == 0, proc.stderr
    first, second = (tmp_path / n / "course.zip" for n in "ab")
    assert first.read_bytes() == second.read_bytes(), "two releases must be byte-identical"
    with zipfile.ZipFile(first) as z:
        members = {n: z.read(n) for n in z.namelist()}
    assert members == {f"course/{p}": d for p, d in _files(release).items()}


@pytest.mark.slow  # builds assignments: seconds
def test_release_output_must_be_new_empty_or_an_earlier_release(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    proc = _tg("release", "01_tensors", "-o", str(other))
    assert proc.returncode == 2 and "not empty" in proc.stderr
    assert (other / "notes.txt").read_text() == "mine"

    proc = _tg("release", "01_tensors", "-o", str(ROOT))
    assert proc.returncode == 2 and "holds the course itself" in proc.stderr

    clone = tmp_path / "clone"
    (clone / ".git").mkdir(parents=True)
    (clone / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    assert _tg("release", "01_tensors", "02_autodiff", "-o", str(clone)).returncode == 0
    (clone / "assignments" / "leftover.txt").write_text("old")
    proc = _tg("release", "01_tensors", "-o", str(clone))
    assert proc.returncode == 0, proc.stderr
    assert (clone / ".git" / "HEAD").is_file(), ".git survives a new release"
    assert not (clone / "assignments" / "02_autodiff").exists()
    assert not (clone / "assignments" / "leftover.txt").exists()
    assert "02_autodiff" not in (clone / "README.md").read_text()


def test_release_refuses_stale_student_notebooks(tmp_path):
    course = _course_copy(tmp_path)
    nb = course / "assignments" / "01_tensors" / "01_tensors.ipynb"
    data = json.loads(nb.read_text())
    data["cells"][2]["source"] = "edited by hand"
    nb.write_text(json.dumps(data))
    proc = _tg("release", "01_tensors", "-o", str(tmp_path / "out"), env=_env(course))
    assert proc.returncode == 1
    assert "stale" in proc.stderr and "01_tensors.ipynb" in proc.stderr
    assert not (tmp_path / "out").exists()


# --- the Colab cell -------------------------------------------------------------------------------


def test_every_student_notebook_starts_with_the_colab_cell():
    for aid in ASSIGNMENT_IDS:
        nb = read(ROOT / "assignments" / aid / f"{aid}.ipynb")
        setup, init = nb.cells[0], nb.cells[1]
        assert SETUP_TAG in setup.metadata.get("tags", []), aid
        assert 'if "google.colab" in sys.modules:' in setup.source
        assert f'ASSIGNMENT = "{aid}"' in setup.source
        assert init.source.startswith("# Initialize Otter"), "otter's init cell comes second"


def test_the_colab_cell_does_nothing_elsewhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    source = read(ROOT / "assignments" / "01_tensors" / "01_tensors.ipynb").cells[0].source
    names: dict = {}
    exec(compile(source, "setup", "exec"), names)  # noqa: S102 - our own generated cell
    assert set(names) - {"__builtins__"} == {"sys"}
    assert list(tmp_path.iterdir()) == [] and Path.cwd() == tmp_path


@pytest.mark.slow  # builds assignments: seconds
def test_release_url_goes_from_the_config_into_the_colab_cell_and_readme(tmp_path):
    course = _course_copy(tmp_path)
    url = "https://github.com/example/course/archive/refs/heads/main.zip"
    master = course / "solutions" / "01_tensors" / "01_tensors.ipynb"
    nb = read(master)
    assert nb.cells[0].source.startswith("# ASSIGNMENT CONFIG")
    nb.cells[0].source = nb.cells[0].source.replace(
        "name: 01_tensors", f"name: 01_tensors\nrelease_url: {url}"
    )
    nbformat.write(nb, master)
    env = _env(course)
    proc = _tg("build", "01_tensors", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # otter never sees release_url
    student = read(course / "assignments" / "01_tensors" / "01_tensors.ipynb")
    assert f'RELEASE_URL = "{url}"' in student.cells[0].source
    assert "release_url" not in json.dumps(student.metadata)
    proc = _tg("release", "01_tensors", "-o", str(tmp_path / "out"), env=env)
    assert proc.returncode == 0, proc.stderr
    assert "no release_url" not in proc.stderr
    readme = (tmp_path / "out" / "README.md").read_text()
    assert (
        "https://colab.research.google.com/github/example/course/blob/main/"
        "assignments/01_tensors/01_tensors.ipynb" in readme
    )
    assert "git clone https://github.com/example/course.git" in readme

    nb.cells[0].source = nb.cells[0].source.replace(url, "course.zip")
    nbformat.write(nb, master)
    proc = _tg("build", "01_tensors", env=env)
    assert proc.returncode == 1 and "release_url" in proc.stderr


# --- authoring guards -----------------------------------------------------------------------------


def _master_cell(nb, name: str) -> int:
    return next(
        i for i, c in enumerate(nb.cells) if c.cell_type == "code" and f"def {name}(" in c.source
    )


@pytest.mark.parametrize(
    "prefix",
    ["\n", "# a reference from float64\n", "   \n\n"],
    ids=["blank line", "comment line", "blank lines"],
)
def test_build_refuses_a_hidden_marker_otter_would_not_see(prefix, tmp_path):
    course = _course_copy(tmp_path)
    master = course / "solutions" / "01_tensors" / "01_tensors.ipynb"
    nb = read(master)
    i = _master_cell(nb, "test_gaussian_reference")
    assert nb.cells[i].source.startswith("# HIDDEN\n")
    nb.cells[i].source = prefix + nb.cells[i].source
    nbformat.write(nb, master)
    before = (course / "assignments" / "01_tensors" / "01_tensors.ipynb").read_bytes()
    for args in (["build", "01_tensors"], ["build", "--check", "01_tensors"]):
        proc = _tg(*args, env=_env(course))
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "question q1, test test_gaussian_reference" in proc.stderr
        assert "first line" in proc.stderr and "Traceback" not in proc.stderr
    assert (course / "assignments" / "01_tensors" / "01_tensors.ipynb").read_bytes() == before


@pytest.mark.slow  # builds assignments: seconds
def test_masters_mark_hidden_tests_the_way_otter_reads_them(built):
    for aid in ASSIGNMENT_IDS:
        tests = master_tests(read(ROOT / "solutions" / aid / f"{aid}.ipynb"))
        built_hidden = {s.name: s.hidden for s in load_tests(built[aid].tests_dir)}
        assert {t.name: t.hidden for t in tests} == built_hidden, aid


def test_audit_requires_a_hidden_test_per_question(built):
    specs = load_tests(built["01_tensors"].tests_dir)
    assert structure_problems(specs, []) == []
    public_q1 = [dataclasses.replace(s, hidden=False) if s.question == "q1" else s for s in specs]
    (problem,) = structure_problems(public_q1, [])
    assert problem.startswith("question q1 has no hidden test")
    assert "test_gaussian_peak" in problem
    typo = Mutant(name="typo", loses=("q1", "q99"), code="def f(): pass")
    (problem,) = structure_problems(specs, [typo])
    assert "mutant typo" in problem and "q99" in problem


def test_a_mutant_of_a_function_the_master_lacks_is_a_clear_error(built_course, tmp_path):
    (a,) = get_assignments(ROOT, ["01_tensors"])
    solution = read(a.solution)
    m = Mutant("misspelt", ("q1",), "def gaussian_densty(x, mu, sigma):\n    return x\n")
    with pytest.raises(MutantError, match="no cell defining gaussian_densty") as e:
        apply_mutant(solution, m)
    assert "gaussian_density" in str(e.value), "the message lists what the solution defines"

    course = _course_copy(tmp_path)  # with 01 built: the only assignment this test grades
    shutil.copytree(built_course["01_tensors"].dist, course / "dist" / "01_tensors")
    mutants = course / "solutions" / "01_tensors" / "mutants.yml"
    mutants.write_text(
        mutants.read_text()
        + "\n- name: misspelt\n  loses: [q1]\n  code: |\n"
        + "    def gaussian_densty(x, mu, sigma):\n        return x\n"
    )
    for args in (["examples", "01_tensors", "-o", str(tmp_path / "ex")], ["audit", "01_tensors"]):
        proc = _tg(*args, env=_env(course))
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        assert "mutant misspelt: the solution has no cell defining gaussian_densty" in proc.stderr
        assert "mutants.yml" in proc.stderr


# --- the routes, for real (fresh environments, a package index) -----------------------------------


def _pip_block(readme: str) -> list[str]:
    """The command lines of the README's pip section, as a student would type them."""
    section = readme.split("### On your computer, with pip", 1)[1].split("\n### ", 1)[0]
    (block,) = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    lines = [ln.strip() for ln in block.splitlines() if ln.strip()]
    assert len([ln for ln in lines if ln.startswith("pip install")]) == 1, lines
    return lines


def _fresh_path(tmp: Path) -> str:
    """PATH for a student's shell: a `python3` (the base interpreter, never this venv) and the
    system's tools."""
    shim = tmp / "shim"
    shim.mkdir(exist_ok=True)
    if not (shim / "python3").exists():
        (shim / "python3").symlink_to(sys._base_executable)
    return f"{shim}:/usr/local/bin:/usr/bin:/bin"


def _student_env(tmp: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "TENSORGRADE_ROOT")
    }
    env["PATH"] = _fresh_path(tmp)
    env["JUPYTER_DATA_DIR"] = str(tmp / "jupyter-data")  # no user kernels but the venv's
    return env


def _filled_in(student: Path, solution: Path) -> nbformat.NotebookNode:
    """The student notebook with each blank filled in from the built solution (as a student
    would: metadata and public tests stay the student notebook's)."""
    nb = read(student)
    sol = read(solution)
    assert SETUP_TAG in nb.cells[0].metadata.get("tags", [])
    assert len(nb.cells) == len(sol.cells) + 1
    filled = 0
    for cell, ref in zip(nb.cells[1:], sol.cells, strict=True):
        assert cell.cell_type == ref.cell_type
        if cell.cell_type == "code" and cell.source != ref.source:
            cell.source = ref.source
            filled += 1
    assert filled
    return nb


def _check_outputs(nb, aid: str) -> list[str]:
    """The outputs of every grader.check cell: each must say that all tests passed."""
    checks = []
    for cell in nb.cells:
        m = re.fullmatch(r'grader\.check\("(\w+)"\)', cell.source.strip())
        if cell.cell_type == "code" and m:
            text = "".join(
                o.get("text", "") + o.get("data", {}).get("text/plain", "") + o.get("evalue", "")
                for o in cell.outputs
            )
            assert f"{m.group(1)} results: All test cases passed!" in text, f"{aid}: {text[:500]}"
            checks.append(m.group(1))
    assert checks, f"{aid}: no grader.check cell ran"
    return checks


@pytest.mark.slow
@pytest.mark.release
def test_pip_route_in_a_fresh_venv(built, release, tmp_path):
    """The README's pip block, verbatim, in a new venv; then JupyterLab starts and every
    notebook, filled in, runs headless in that venv with all its public checks passing."""
    course = tmp_path / "course"
    shutil.copytree(release, course)
    env = _student_env(tmp_path)
    lines = _pip_block((course / "README.md").read_text())
    assert lines[-1] == "jupyter lab"
    script = "\n".join(["set -eo pipefail", *lines[:-1], "jupyter lab --version"])
    proc = subprocess.run(
        ["bash", "-c", script], cwd=course, env=env, capture_output=True, text=True, timeout=1800
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    venv = course / ".venv"
    assert not (venv / "pyvenv.cfg").read_text().count("include-system-site-packages = true")
    version = subprocess.run(
        [str(venv / "bin" / "jupyter-lab"), "--version"], env=env, capture_output=True, text=True
    )
    assert version.returncode == 0 and re.fullmatch(r"\d+\.\d+\.\S+\n", version.stdout), version

    jupyter = str(venv / "bin" / "jupyter")
    for aid in ASSIGNMENT_IDS:
        folder = course / "assignments" / aid
        nb = _filled_in(folder / f"{aid}.ipynb", built[aid].solution)
        nb.cells.append(
            nbformat.v4.new_code_cell(
                "import sys, otter, tensorgrade\nprint('KERNEL', sys.executable)\n"
                "print('HELPERS', tensorgrade.__file__)"
            )
        )
        nbformat.write(nb, folder / f"{aid}.ipynb")
        run = subprocess.run(
            [jupyter, "nbconvert", "--to", "notebook", "--execute", f"{aid}.ipynb"]
            + ["--output", "executed.ipynb", "--ExecutePreprocessor.timeout=900"],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        done = read(folder / "executed.ipynb")
        _check_outputs(done, aid)
        last = "".join(o.get("text", "") for o in done.cells[-1].outputs)
        assert f"KERNEL {venv}/bin/python" in last, last
        assert f"HELPERS {venv}/lib/" in last, "the helpers come from the venv, not from src/"


# A stand-in for Colab's kernel: otter decides it runs in Colab when str(get_ipython()) names
# google.colab, i.e. when the shell's class lives in google.colab._shell, as in Colab.
FAKE_COLAB = {
    "google/colab/__init__.py": '"""A stand-in for Google Colab\'s package (tests only)."""\n',
    "google/colab/_shell.py": (
        "from ipykernel.zmqshell import ZMQInteractiveShell\n\n\n"
        "class Shell(ZMQInteractiveShell):\n    pass\n"
    ),
    "google/colab/_kernel.py": (
        "from ipykernel.ipkernel import IPythonKernel\nfrom traitlets import Type\n\n"
        "from google.colab._shell import Shell\n\n\n"
        "class Kernel(IPythonKernel):\n    shell_class = Type(Shell)\n"
    ),
}
# what Colab brings (besides much else): torch, numpy, matplotlib, scikit-image, ipykernel
COLAB_PACKAGES = ["numpy", "matplotlib", "scikit-image", "ipykernel"]


@pytest.mark.slow
@pytest.mark.release
def test_colab_route_installs_everything_from_the_release(built, tmp_path, monkeypatch):
    """Each notebook, filled in, opened alone in a (stand-in) Colab: its first cell installs the
    helpers and otter from the release's zip and lays out the public tests for otter, and every
    check passes."""
    from nbclient import NotebookClient

    proc = _tg("release", "--zip", "-o", str(tmp_path / "course.zip"))
    assert proc.returncode == 0, proc.stderr
    url = (tmp_path / "course.zip").as_uri()

    env = _student_env(tmp_path)
    venv = tmp_path / "colab-venv"
    pin = next(
        ln.strip()
        for ln in (ROOT / "requirements" / "dev.txt").read_text().splitlines()
        if ln.startswith("torch==")
    )
    for cmd in (
        ["python3", "-m", "venv", str(venv)],
        [str(venv / "bin" / "pip"), "install", "-q", pin, *COLAB_PACKAGES],
    ):
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        assert run.returncode == 0, run.stderr[-3000:]
    absent = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import otter"], env=env, capture_output=True
    )
    assert absent.returncode != 0, "the Colab stand-in must start without otter"

    fake = tmp_path / "fake"
    for rel, text in FAKE_COLAB.items():
        (fake / rel).parent.mkdir(parents=True, exist_ok=True)
        (fake / rel).write_text(text)
    home = tmp_path / "home"
    home.mkdir()
    spec = tmp_path / "jupyter" / "kernels" / "colab"
    spec.mkdir(parents=True)
    kernel_env = {
        "PYTHONPATH": str(fake),
        "HOME": str(home),
        "TENSORGRADE_RELEASE_URL": url,
        "PIP_CACHE_DIR": os.environ.get("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip")),
        "PATH": env["PATH"],
    }
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [str(venv / "bin" / "python"), "-m", "ipykernel_launcher"]
                + ["--IPKernelApp.kernel_class=google.colab._kernel.Kernel"]
                + ["-f", "{connection_file}"],
                "display_name": "Colab stand-in",
                "language": "python",
                "env": kernel_env,
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))

    for aid in ASSIGNMENT_IDS:
        nb = _filled_in(ROOT / "assignments" / aid / f"{aid}.ipynb", built[aid].solution)
        nb.cells.append(
            nbformat.v4.new_code_cell(
                "import os, tempfile, otter, tensorgrade\n"
                "print('INTERPRETER', grader.interpreter)\n"
                "print('HELPERS', tensorgrade.__file__)\n"
                "print('TESTS', sorted(os.listdir('tests')))\n"
                "os.chdir(tempfile.mkdtemp())\n"
                "try:\n    otter.Notebook()\nexcept ValueError as e:\n    print('CONTROL', e)\n"
            )
        )
        alone = tmp_path / "opened-alone" / aid  # nothing next to the notebook, as in Colab
        alone.mkdir(parents=True)
        client = NotebookClient(
            nb, kernel_name="colab", timeout=900, resources={"metadata": {"path": str(alone)}}
        )
        client.execute()
        setup = "".join(o.get("text", "") for o in nb.cells[0].outputs)
        assert f"Colab: {aid} is set up in {home}/tensorgrade-course/" in setup, setup
        checks = _check_outputs(nb, aid)
        last = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
        assert "INTERPRETER IPythonInterpreter.COLAB" in last, last
        assert f"HELPERS {venv}/lib/" in last, last
        assert f"TESTS {sorted(f'{q}.py' for q in checks)}" in last, last
        # without the first cell's work, otter in Colab refuses (what students met before)
        assert "CONTROL Tests directory ./tests does not exist" in last, last
        assert list(alone.iterdir()) == []


def test_a_solution_line_that_a_master_gives_students_is_not_a_leak():
    """A generic line (a timing loop's header) in one assignment's solution and in another's
    given code is public already: a note. Any other solution line in a released file is refused."""
    from tensorgrade.release import Release, check_no_secrets

    assignments = get_assignments(ROOT, None)
    generic = "for _ in range(repeats):"
    secret = "rtol = max(A.shape) * torch.finfo(A.dtype).eps"
    solutions = {a.id: _solution_lines(read(a.master)) for a in assignments}
    given = {a.id: _given_code(read(a.master)) for a in assignments}
    owner = next(aid for aid, lines in solutions.items() if generic in lines)
    assert any(generic in code for aid, code in given.items() if aid != owner)
    leak_owner = next(aid for aid, lines in solutions.items() if secret in lines)
    assert not any(secret in code for code in given.values())

    def notebook(line: str) -> bytes:
        cell = {"cell_type": "code", "source": f"x = 1\n{line}\n", "metadata": {}, "outputs": []}
        return json.dumps({"cells": [cell], "metadata": {}}).encode()

    ok = Release({"assignments/x/x.ipynb": notebook(generic)}, ["x"])
    notes = check_no_secrets(ok, assignments)
    assert any(generic in n and owner in n for n in notes)
    bad = Release({"assignments/x/x.ipynb": notebook(secret)}, ["x"])
    with pytest.raises(ReleaseError, match=f"holds a line of the solution of {leak_owner}"):
        check_no_secrets(bad, assignments)
