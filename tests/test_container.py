"""The grading image's recipe, without Docker: the Dockerfile is linted and holds what the grader
needs; the build script is valid and stages a small context. The image itself is built and run in
a real Docker engine by tests/test_image.py (marker image).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert base == "tensorgrade-base:bookworm"  # made by build-image.sh where none can be pulled
    assert "--uid 999 --gid judge" in text
    # every Python package from the wheelhouse, none from an index; torch at the pin, promised
    assert "--no-index --find-links /tmp/wheelhouse" in text
    assert "TENSORGRADE_TORCH_VERSION=${TORCH_VERSION}" in text
    # the course folder is made with its group before anything is copied into it
    made = text.index("install -d -o root -g judge -m 0750 /srv/course")
    assert made < text.index("COPY --chown=root:judge")
    entry = _instruction("ENTRYPOINT")
    assert entry[:2] == ["tensorgrade", "grade"]
    assert entry[entry.index("--judge-user") + 1] == "judge"
    for part in ("dist", "solutions", "assignments"):
        assert f"COPY --chown=root:judge {part} /srv/course/{part}" in text
    assert "o= /srv/course" in text  # other users (the sandboxes' uids) can't read the course


def test_build_script_is_valid_bash_and_reads_the_projects_torch_pin():
    script = ROOT / "autograder" / "docker" / "build-image.sh"
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "requirements/dev.txt" in script.read_text()
    assert "--network none" in script.read_text()  # the build itself needs no network


def test_build_script_refuses_a_folder_that_is_not_a_built_course(tmp_path):
    script = ROOT / "autograder" / "docker" / "build-image.sh"
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    fake = tmp_path / "docker"  # a docker client whose engine answers, so the course is checked
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    proc = subprocess.run(["bash", str(script), str(tmp_path)], capture_output=True, text=True,
                          env=env)  # fmt: skip
    assert proc.returncode == 1
    assert f"{tmp_path} has no assignments/ (is it a course root?)" in proc.stderr


def test_pin_check_compares_the_imported_torch_with_the_promise(monkeypatch):
    import torch

    from tensorgrade.pins import TORCH_VERSION_ENV, torch_pin_mismatch

    monkeypatch.delenv(TORCH_VERSION_ENV, raising=False)
    assert torch_pin_mismatch() is None  # nothing promised: nothing to check
    monkeypatch.setenv(TORCH_VERSION_ENV, torch.__version__.split("+")[0])
    assert torch_pin_mismatch() is None
    monkeypatch.setenv(TORCH_VERSION_ENV, "0.0.1")
    assert f"promises torch 0.0.1 ({TORCH_VERSION_ENV}) but imports" in torch_pin_mismatch()


@pytest.mark.slow  # three interpreters, one importing torch: seconds
def test_pin_check_reads_the_torch_that_would_be_imported_without_importing_it(tmp_path):
    """Checked before the grader imports torch (the zygote imports its own meanwhile): the version
    is read from the torch that `import torch` would load, a shadowing one included."""
    code = (
        "import sys; from tensorgrade.pins import importable_torch, torch_pin_mismatch; "
        "v, d = importable_torch(); m = torch_pin_mismatch(); "
        "print('torch' in sys.modules); import torch; print(v == torch.__version__, d, m)"
    )
    env = {**os.environ, "TENSORGRADE_TORCH_VERSION": "0.0.1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    imported_before, same = out.stdout.splitlines()[0], out.stdout.splitlines()[1].split()[0]
    assert (imported_before, same) == ("False", "True"), out.stdout + out.stderr
    assert "promises torch 0.0.1" in out.stdout

    fake = tmp_path / "torch"  # a torch of another version earlier on the path
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "version.py").write_text("__version__ = '9.9.9+cpu'\n")
    env = {**env, "TENSORGRADE_TORCH_VERSION": "9.9.9", "PYTHONPATH": str(tmp_path)}
    code = "from tensorgrade.pins import torch_pin_mismatch as m; print(m())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "None", out.stdout + out.stderr
    env["TENSORGRADE_TORCH_VERSION"] = "2.13.0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert f"imports torch 9.9.9+cpu from {fake}" in out.stdout, out.stdout + out.stderr


@pytest.mark.slow  # a whole `tensorgrade grade` process: seconds
def test_grade_refuses_another_torch_than_the_environment_promises(tmp_path):
    """The image and run_autograder set TENSORGRADE_TORCH_VERSION to the pin: grading on another
    torch stops before anything is graded, with a message that says which is which."""
    import torch

    env = {**os.environ, "TENSORGRADE_TORCH_VERSION": "0.0.1", "TENSORGRADE_ROOT": str(ROOT)}
    cmd = [sys.executable, "-m", "tensorgrade", "grade", str(tmp_path), "-a", "01_tensors"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (
        f"promises torch 0.0.1 (TENSORGRADE_TORCH_VERSION) but imports torch {torch.__version__}"
        in (proc.stderr)
    )
    env["TENSORGRADE_TORCH_VERSION"] = torch.__version__.split("+")[0]  # the same: no complaint
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert "promises torch" not in proc.stderr
