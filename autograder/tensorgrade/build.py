"""`tensorgrade build`: master notebook -> student notebook (committed) + dist/<id>/ (ignored).

otter assign does the authoring transform; we make its output reproducible and lay it out where
the rest of tensorgrade looks for it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from . import notebooks
from .course import Assignment
from .zips import normalise_zip


class BuildError(RuntimeError):
    pass


@dataclass
class BuildOutput:
    assignment: Assignment
    student_files: dict[str, bytes]  # relative path under assignments/<id>/ -> content


def run_otter_assign(a: Assignment, out: Path) -> None:
    """Run otter assign on the master into ``out`` (tests are not run here: our suite does that)."""
    if not a.master.is_file():
        raise BuildError(f"{a.id}: master notebook not found at {a.master}")
    cmd = [sys.executable, "-m", "otter", "assign", "--no-pdfs", "--no-run-tests"]
    proc = subprocess.run(
        [*cmd, str(a.master), str(out)], capture_output=True, text=True, cwd=a.master.parent
    )
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise BuildError(f"{a.id}: otter assign failed:\n" + "\n".join(tail))


def _student_files(student_out: Path, a: Assignment) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for p in sorted(student_out.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(student_out).as_posix()
        if p.suffix == ".ipynb":
            nb = notebooks.normalise(notebooks.read(p))
            files[rel] = notebooks.dumps(nb).encode()
        else:
            files[rel] = p.read_bytes()
    if f"{a.id}.ipynb" not in files:
        raise BuildError(f"{a.id}: otter assign produced no student notebook")
    return files


def build_one(a: Assignment, *, write_dist: bool = True) -> BuildOutput:
    with tempfile.TemporaryDirectory(prefix=f"tg-build-{a.id}-") as tmp:
        out = Path(tmp) / "out"
        run_otter_assign(a, out)
        student = _student_files(out / "student", a)
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
