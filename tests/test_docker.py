"""The sandbox inside a real Docker engine: Docker's default profile (namespaces refused) and
with `--cap-add SYS_ADMIN` (the documented flags), as `tensorgrade doctor` sees them. Grading in
the real image, in both profiles, is tests/test_image.py.

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
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from containers import require_docker

import tensorgrade

pytestmark = [pytest.mark.docker, pytest.mark.sandbox]
REPO = Path(tensorgrade.__file__).resolve().parents[2]
IMAGE = "tensorgrade-test-empty"


@pytest.fixture(scope="module")
def docker():
    require_docker()
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
