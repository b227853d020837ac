"""The sandbox inside a real Docker engine: Docker's default profile (namespaces refused) and
with `--cap-add SYS_ADMIN` (the documented flags).

No image registry is reachable here, so the container is an empty imported image with this
machine's system, interpreter and repository bind-mounted read-only at their own paths: the
kernel, Docker's seccomp profile and capabilities are the real ones; only the files come from
the host. CI starts dockerd and sets TENSORGRADE_REQUIRE_DOCKER=1, so a missing engine fails there
instead of skipping.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import nbformat
import pytest

import tensorgrade

pytestmark = [pytest.mark.docker, pytest.mark.sandbox]
REPO = Path(tensorgrade.__file__).resolve().parents[2]
IMAGE = "tensorgrade-test-empty"


def _docker_ok() -> str:
    exe = shutil.which("docker")
    if not exe:
        return "no docker client"
    proc = subprocess.run([exe, "info"], capture_output=True, text=True, timeout=60)
    return "" if proc.returncode == 0 else f"no docker engine: {proc.stderr.strip()[-200:]}"


@pytest.fixture(scope="module")
def docker():
    why = _docker_ok()
    if why:
        if os.environ.get("TENSORGRADE_REQUIRE_DOCKER"):
            pytest.fail(why)
        pytest.skip(why)
    buf = io.BytesIO()
    tarfile.open(fileobj=buf, mode="w").close()
    subprocess.run(
        ["docker", "import", "-", IMAGE], input=buf.getvalue(), check=True, capture_output=True
    )
    return "docker"


def _mounts() -> list[str]:
    paths = {"/usr", "/etc", sys.base_prefix, sys.prefix, str(REPO)}
    paths |= {
        p for p in ("/bin", "/sbin", "/lib", "/lib64") if not os.path.islink(p) and os.path.isdir(p)
    }
    args = []
    for p in sorted(paths):
        args += ["-v", f"{os.path.realpath(p)}:{os.path.realpath(p)}:ro"]
    for p in ("/bin", "/sbin", "/lib", "/lib64"):
        if os.path.islink(p):  # merged /usr: the image needs the links themselves
            args += ["-v", f"{os.path.realpath(p)}:{p}:ro"]
    return args


def _run(extra: list[str], cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    base = ["docker", "run", "--rm", "--network", "none", "--tmpfs", "/tmp:exec,mode=1777"]
    base += [
        "-e",
        "PATH=/usr/bin:/bin",
        "-e",
        "TMPDIR=/tmp",
        "-e",
        "CANVAS_API_TOKEN=tg-docker-token",
    ]
    base += ["-w", "/", *_mounts(), *extra, IMAGE]
    return subprocess.run(base + cmd, capture_output=True, text=True, timeout=timeout)


def _doctor(docker, extra: list[str]) -> dict:
    proc = _run(extra, [sys.executable, "-m", "tensorgrade", "doctor", "--json"])
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_docker_default_profile_gives_uid_landlock_and_seccomp(
    docker, interpreter_reachable_by_others
):
    r = _doctor(docker, [])
    held = {x["name"]: x["held"] for x in r["layers"]}
    why = {x["name"]: x["detail"] for x in r["layers"]}
    assert r["euid"] == 0 and r["level"] == "reduced"
    assert held["uid"] and held["landlock"] and held["seccomp"], r["layers"]
    assert not held["net"] and "Operation not permitted" in why["net"]
    tried = {a["name"]: a["outcome"] for a in r["attempts"]}
    for name in ("tcp_connect", "inet_socket", "read_grader_file", "grader_environment", "own_uid"):
        assert tried[name].startswith("denied"), (name, tried[name])


def test_docker_with_cap_sys_admin_gives_every_layer(docker, interpreter_reachable_by_others):
    r = _doctor(docker, ["--cap-add", "SYS_ADMIN"])
    assert r["level"] == "full" and r["ok"], r


SNOOP = """
import os, socket
for p in {paths!r}:
    try:
        print("READ", p, os.listdir(p) if os.path.isdir(p) else open(p).read(10))
    except OSError as e:
        print("DENIED", p, type(e).__name__)
try:
    socket.create_connection(("127.0.0.1", 80), timeout=2)
    print("READ network")
except OSError as e:
    print("DENIED network", type(e).__name__)
print("uid", os.getuid(), "token" if "tg-docker-token" in str(os.environ) else "")
"""


@pytest.mark.slow
@pytest.mark.parametrize("caps", [[], ["--cap-add", "SYS_ADMIN"]], ids=["default", "sys_admin"])
def test_grading_in_docker_with_an_unprivileged_judge(
    docker, caps, built, interpreter_reachable_by_others
):
    """The image's way of grading (`--judge-user`, submissions and results as volumes), in both
    profiles: the student's code never runs as root or as the judge and reads nothing of the
    course, the submissions or the results, and has no network."""
    a = built["01_tensors"]
    work = Path(tempfile.mkdtemp(prefix="tg-docker-"))
    try:
        subs, results = work / "submissions", work / "results"
        subs.mkdir()
        results.mkdir()
        hidden = a.tests_dir / "q1.py"
        nb = nbformat.read(a.solution, as_version=4)
        paths = [str(hidden), str(REPO / "solutions"), "/submissions", "/results"]
        nb.cells.append(nbformat.v4.new_code_cell(SNOOP.format(paths=paths)))
        (subs / "snoop.ipynb").write_text(nbformat.writes(nb))
        shutil.copy(a.solution, subs / "ada.ipynb")
        subprocess.run(["chmod", "-R", "a+rX", str(work)], check=True)
        vols = [
            "-v",
            f"{subs}:/submissions:ro",
            "-v",
            f"{results}:/results",
            "-e",
            f"TENSORGRADE_ROOT={REPO}",
        ]
        cmd = [sys.executable, "-m", "tensorgrade", "grade", "/submissions", "-a", "01_tensors"]
        cmd += ["-o", "/results", "-q", "--judge-user", "nobody"]
        proc = _run(caps + vols, cmd)
        assert proc.returncode == 0, proc.stderr[-3000:]
        snoop = json.loads((results / "snoop" / "results.json").read_text())
        ada = json.loads((results / "ada" / "results.json").read_text())
    finally:
        subprocess.run(["chmod", "-R", "u+rwX", str(work)])
        shutil.rmtree(work, ignore_errors=True)
    level = "full" if caps else "reduced"
    for data in (snoop, ada):
        assert data["score"] == 100, data["extra_data"]["reason"]
        assert data["extra_data"]["isolation"]["level"] == level
        assert data["extra_data"]["judge_user"] == "nobody"
    out = snoop["extra_data"]["student_output"]
    assert "READ" not in out and out.count("DENIED") == 5, out
    uid = int(out.split("uid")[-1].split()[0])
    assert uid not in (0, 65534) and snoop["extra_data"]["sandbox_uids"] == [uid]
    assert "token" not in out.split("uid")[-1]
