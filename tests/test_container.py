"""The grading image: its Dockerfile is linted, and its entry point is run outside Docker.

No Docker engine runs on the development or CI machines, so the entry point is taken from the
Dockerfile and run here as the container would run it: as root, with the judge dropped to an
unprivileged user, the course readable by that user only, submissions and results in folders.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest

from sandboxing import namespaces_here

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "autograder" / "docker" / "Dockerfile"


def _instruction(name: str) -> list[str]:
    lines = re.findall(rf"^{name}\s+(.*)$", DOCKERFILE.read_text(), flags=re.M)
    assert len(lines) == 1, f"expected one {name} in the Dockerfile"
    return json.loads(lines[0])


def test_dockerfile_passes_hadolint():
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(exe).exists(), "hadolint missing: it comes with the dev requirements"
    proc = subprocess.run(
        [exe, "--failure-threshold", "style", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_has_what_the_grader_needs():
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, flags=re.M).group(1)
    assert re.fullmatch(r"pytorch/pytorch:[\d.]+-cuda[\d.]+-cudnn\d+-runtime", base), base
    assert "--uid 999 --gid judge" in text
    entry = _instruction("ENTRYPOINT")
    assert entry[:2] == ["tensorgrade", "grade"]
    assert entry[entry.index("--judge-user") + 1] == "judge"
    for part in ("dist", "solutions", "assignments"):
        assert f"COPY --chown=root:judge {part} /srv/course/{part}" in text
    assert "o= /srv/course" in text  # other users (the sandboxes' uids) can't read the course


def _course_copy(built) -> Path:
    """The course laid out as in the image (/srv/course), readable by root and nogroup only."""
    base = Path(tempfile.mkdtemp(prefix="tg-image-"))
    base.chmod(0o755)
    course = base / "srv" / "course"
    for part in ("assignments", "solutions", "dist"):
        shutil.copytree(ROOT / part, course / part)
    for p in [course, *course.rglob("*")]:
        os.chown(p, 0, 65534, follow_symlinks=False)  # root:nogroup, as root:judge in the image
        p.chmod(0o750 if p.is_dir() else 0o640)
    course.parent.chmod(0o755)
    return course


SNOOP = """
import os
for p in [{paths}]:
    try:
        if os.path.isdir(p):
            os.listdir(p)
        else:
            open(p).read()
        print("READ", p)
    except OSError:
        print("DENIED", p)
print("uid", os.getuid())
"""


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not namespaces_here(), reason="needs root and namespaces")
@pytest.mark.parametrize("isolation", ["full", "reduced"])
def test_entry_point_grades_as_the_image_would(built, isolation, interpreter_reachable_by_others):
    """With the documented flags (full), and as under Docker's default profile, where namespaces
    are refused ("reduced" gives the same sandbox): the student's code never runs as root or as
    the judge, and reads nothing of the course, the results or the submissions."""
    course = _course_copy(built)
    base = course.parent.parent
    try:
        subs, results = base / "submissions", base / "results"
        subs.mkdir()
        a = built["01_tensors"]
        shutil.copy(a.solution, subs / "ada.ipynb")
        nb = nbformat.read(a.student, as_version=4)
        hidden = course / "dist" / "01_tensors" / "tests" / "q1.py"
        paths = ", ".join(repr(str(p)) for p in (hidden, course / "dist", results, subs))
        nb.cells.append(nbformat.v4.new_code_cell(SNOOP.format(paths=paths)))
        (subs / "snoop.ipynb").write_text(nbformat.writes(nb))
        for p in subs.iterdir():
            p.chmod(0o644)

        entry = _instruction("ENTRYPOINT")
        mapping = {"judge": "nobody", "/results": str(results), "/submissions": str(subs)}
        cmd = [sys.executable, "-m", "tensorgrade", *[mapping.get(x, x) for x in entry[1:]]]
        env = {**os.environ, "TENSORGRADE_ROOT": str(course)}
        cmd += ["-q", "--isolation", isolation]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr

        ada = json.loads((results / "ada" / "results.json").read_text())["extra_data"]
        snoop = json.loads((results / "snoop" / "results.json").read_text())["extra_data"]
        assert ada["judge_user"] == snoop["judge_user"] == "nobody"
        assert ada["isolation"]["level"] == snoop["isolation"]["level"] == isolation
        assert snoop["isolation"]["uid"] and snoop["isolation"]["landlock"]
        uid = int(snoop["student_output"].split("uid")[-1].split()[0])
        assert uid not in (0, 65534) and snoop["sandbox_uids"] == [uid]
        assert all(t["passed"] for t in ada["tests"]), [
            t["output"] for t in ada["tests"] if not t["passed"]
        ]
        assert not any(t["passed"] for t in snoop["tests"])
        assert snoop["student_output"].count("DENIED") == 4, snoop["student_output"]
        assert "READ" not in snoop["student_output"]
        assert (results / "grades.csv").is_file()
    finally:
        shutil.rmtree(base, ignore_errors=True)
