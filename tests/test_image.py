"""The real grading image and a Gradescope-shaped container, built and run in a real Docker engine.

What an instructor does, as docs/delivery.md says it: `make image` (here the same script, tagged
for the tests), then `docker run ... tensorgrade-grader -a 01_tensors` on a folder of submissions,
in Docker's default profile and with the documented flags; and `dist/<id>/gradescope.zip`
unpacked into /autograder/source of a fresh container whose build runs setup.sh as root, then
run_autograder once per submission with Gradescope's default limits (768 MB, half a CPU).

The submissions: the solution, the blank student notebook, a notebook that is not JSON, one that
tries to read the course, the other submissions and the results and to reach a TCP port on the
loopback, and one that leaves a process behind that keeps trying to write into the results.
Every score must equal the score the same submissions get on the bare machine.

No registry is reachable here: the base is made from Debian's packages by the build script, and
torch comes from pip's configuration on this machine (TENSORGRADE_TEST_TORCH_INDEX overrides).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jsonschema
import nbformat
import pytest
from containers import LoopbackListener, docker, require_docker

pytestmark = [pytest.mark.image, pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
TAG = "tensorgrade-grader:test"
GS_TAG = "tensorgrade-gradescope:test"
BASE = "tensorgrade-base:bookworm"
AID = "01_tensors"
SCHEMA = json.loads(
    (REPO / "autograder/tensorgrade/schemas/gradescope_results.schema.json").read_text()
)
TORCH_INDEX = os.environ.get("TENSORGRADE_TEST_TORCH_INDEX", "pip")
SUBMISSIONS = ("blank", "broken", "linger", "snoop", "solution")

SNOOP = """
import os, socket
for p in {paths!r}:
    try:
        print("READ", p, os.listdir(p) if os.path.isdir(p) else open(p).read(10))
    except OSError as e:
        print("DENIED", p, type(e).__name__)
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=3).close()
    print("NET reached")
except OSError as e:
    print("NET denied", type(e).__name__)
print("WHO", os.getuid(), os.getgid())
"""

LINGER = """
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        for _ in range(3000):
            for p in {paths!r}:
                try:
                    with open(p, "a") as f:
                        f.write("lingered")
                except OSError:
                    pass
            time.sleep(0.1)
    os._exit(0)
os.wait()
print("LINGER started")
"""


def _measured(what: str, seconds: float) -> None:
    print(f"[image] {what}: {seconds:.0f} s", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Fixtures: the engine, the submissions, the bare-machine scores, the image


@pytest.fixture(scope="module")
def engine():
    require_docker()


@pytest.fixture(scope="module")
def course(built):
    """The built 01 assignment (its course root is what the image copies)."""
    return built[AID]


@pytest.fixture(scope="module")
def listener():
    srv = LoopbackListener()
    yield srv
    srv.close()


def _with_cell(nb_path: Path, code: str) -> str:
    nb = nbformat.read(nb_path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(code))
    return nbformat.writes(nb)


def _write_submissions(folder: Path, a, snoop_paths: list[str], linger_paths: list[str], port: int):
    """One notebook per name in SUBMISSIONS, in ``folder/<name>.ipynb``."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(a.solution, folder / "solution.ipynb")
    shutil.copy(a.student, folder / "blank.ipynb")
    (folder / "broken.ipynb").write_text('{"cells": [ not json')
    snoop = SNOOP.format(paths=snoop_paths, port=port)
    (folder / "snoop.ipynb").write_text(_with_cell(a.solution, snoop))
    (folder / "linger.ipynb").write_text(_with_cell(a.solution, LINGER.format(paths=linger_paths)))


IMAGE_SNOOP = [
    "/srv/course",
    f"/srv/course/dist/{AID}/tests",
    "/submissions",
    "/submissions/solution.ipynb",
    "/results",
]
IMAGE_LINGER = ["/results/linger.txt", "/results/solution/results.json", "/tmp/linger.txt"]


@pytest.fixture(scope="module")
def workdir():
    d = Path(tempfile.mkdtemp(prefix="tg-image-test-"))
    d.chmod(0o755)
    yield d
    subprocess.run(["chmod", "-R", "u+rwX", str(d)])
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def submissions(course, workdir, listener):
    folder = workdir / "submissions"
    _write_submissions(folder, course, IMAGE_SNOOP, IMAGE_LINGER, listener.port)
    subprocess.run(["chmod", "-R", "a+rX", str(folder)], check=True)
    return folder


_BARE: dict[str, dict] = {}


def _bare(course, submissions: Path, workdir: Path) -> dict[str, dict]:
    """The same submissions graded on this machine, outside any container (once per module;
    the calling test holds interpreter_reachable_by_others, which is per test)."""
    if not _BARE:
        out = workdir / "bare"
        cmd = [sys.executable, "-m", "tensorgrade", "grade", str(submissions), "-a", AID]
        cmd += ["-o", str(out), "-q"]
        env = {**os.environ, "TENSORGRADE_ROOT": str(course.root)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
        assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
        _BARE.update({name: _result(out, name) for name in SUBMISSIONS})
    return _BARE


@pytest.fixture(scope="module")
def image(engine, course):
    """`make image`'s script, on the built course, tagged for the tests
    (TENSORGRADE_TEST_REUSE_IMAGE=1 keeps an image already built, for working on these tests)."""
    if (
        os.environ.get("TENSORGRADE_TEST_REUSE_IMAGE")
        and not docker("image", "inspect", TAG).returncode
    ):
        yield TAG
        return
    env = {**os.environ, "TAG": TAG, "TORCH_INDEX": TORCH_INDEX, "PYTHON": sys.executable}
    t0 = time.monotonic()
    proc = subprocess.run(
        ["bash", str(REPO / "autograder/docker/build-image.sh"), str(course.root)],
        capture_output=True,
        text=True,
        env=env,
        timeout=2400,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    _measured("make image", time.monotonic() - t0)
    size = int(docker("image", "inspect", "-f", "{{.Size}}", TAG, check=True).stdout)
    print(f"[image] {TAG}: {size / 1e6:.0f} MB", file=sys.stderr)
    yield TAG
    docker("rmi", "-f", TAG, GS_TAG)  # the test's images only; the base is kept for the next run


def _result(results: Path, name: str) -> dict:
    data = json.loads((results / name / "results.json").read_text())
    jsonschema.Draft202012Validator(SCHEMA).validate(data)
    return data


def _question_scores(data: dict) -> dict[str, float]:
    scores: dict[str, float] = {}
    for t in data.get("tests", []):
        q = t["tags"][0]
        scores[q] = scores.get(q, 0.0) + t["score"]
    return scores


def _check_against_bare(results: dict[str, dict], bare: dict[str, dict], level: str, judge: str):
    for name in SUBMISSIONS:
        got, want = results[name], bare[name]
        assert got["score"] == want["score"], (name, got["extra_data"].get("reason"))
        assert _question_scores(got) == _question_scores(want), name
        assert got["extra_data"]["status"] == want["extra_data"]["status"], name
    assert bare["solution"]["score"] == 100 and bare["blank"]["score"] == 0
    assert bare["broken"]["score"] == 0 and bare["broken"]["extra_data"]["status"] != "graded"
    for name in ("solution", "snoop", "linger", "blank"):
        extra = results[name]["extra_data"]
        assert extra["isolation"]["level"] == level, (name, extra["isolation"])
        assert extra["isolation"]["uid"] and extra["isolation"]["landlock"], extra["isolation"]
        assert extra["isolation"]["seccomp"], extra["isolation"]
        uids = extra["sandbox_uids"]
        assert uids and all(u >= 1_900_000_000 for u in uids), (name, uids)
        if judge:
            assert extra["judge_user"] == judge


def _check_snoop(data: dict, paths: list[str], listener: LoopbackListener) -> None:
    out = data["extra_data"]["student_output"]
    assert "READ" not in out and out.count("DENIED") == len(paths), out
    assert "NET denied" in out and "NET reached" not in out, out
    uid, gid = (int(x) for x in out.split("WHO")[-1].split()[:2])
    assert uid >= 1_900_000_000 and gid not in (0, 999), out
    assert listener.accepted == 0


def _no_lingering_writes(folder: Path) -> None:
    found = [p for p in folder.rglob("*") if p.is_file() and b"lingered" in p.read_bytes()]
    assert not found and not (folder / "linger.txt").exists(), found


# ---------------------------------------------------------------------------------------------
# The grading image


def test_image_holds_the_pinned_torch_and_a_course_only_the_judge_reads(image):
    pin = (REPO / "requirements/dev.txt").read_text().split("torch==")[1].split()[0]
    py = "import torch, os; print(torch.__version__, os.environ['TENSORGRADE_TORCH_VERSION'])"
    out = docker("run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c", py)
    assert out.returncode == 0, out.stderr
    have, promised = out.stdout.split()
    assert have.split("+")[0] == pin == promised
    stat = docker(
        "run", "--rm", "--network", "none", "--entrypoint", "stat", image,
        "-c", "%n %U:%G %a", "/srv/course", "/srv/course/dist", f"/srv/course/dist/{AID}/tests",
    )  # fmt: skip
    assert stat.returncode == 0, stat.stderr
    for line in stat.stdout.splitlines():
        _, owner, mode = line.split()
        assert owner == "root:judge" and mode in ("750", "640"), line


def test_image_refuses_to_grade_on_another_torch(image):
    proc = docker(
        "run", "--rm", "--network", "none", "-e", "TENSORGRADE_TORCH_VERSION=0.0.1", image,
        "-a", AID,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "promises torch 0.0.1" in proc.stderr


@pytest.mark.parametrize(
    "flags",
    [[], ["--cap-add", "SYS_ADMIN", "--security-opt", "apparmor=unconfined"]],
    ids=["default_profile", "documented_flags"],
)
def test_image_grades_as_the_docs_say(
    image, course, submissions, workdir, listener, flags, interpreter_reachable_by_others
):
    """docs/delivery.md's command (CPU variant): scores equal the bare machine's, the student's
    code runs as a fresh uid, reads nothing of the course, submissions or results, reaches no
    port, and what it leaves running changes no result."""
    bare = _bare(course, submissions, workdir)
    results = workdir / f"results-{'full' if flags else 'reduced'}"
    results.mkdir()
    t0 = time.monotonic()
    proc = docker(
        "run", "--rm", "--network", "none", *flags,
        "-v", f"{submissions}:/submissions:ro", "-v", f"{results}:/results",
        image, "-a", AID,
    )  # fmt: skip
    _measured(f"{len(SUBMISSIONS)} submissions, {'documented flags' if flags else 'default'}",
              time.monotonic() - t0)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    got = {name: _result(results, name) for name in SUBMISSIONS}
    level = "full" if flags else "reduced"
    _check_against_bare(got, bare, level, judge="judge")
    _check_snoop(got["snoop"], IMAGE_SNOOP, listener)
    assert "LINGER started" in got["linger"]["extra_data"]["student_output"]
    _no_lingering_writes(results)
    assert (results / "grades.csv").read_text().count("\n") == len(SUBMISSIONS) + 1


# ---------------------------------------------------------------------------------------------
# Gradescope, as its documentation lays it out

GS_SNOOP = [
    "/autograder/source",
    f"/autograder/source/course/dist/{AID}/tests",
    "/autograder/results",
    "/autograder/run_autograder",
    "/opt/tensorgrade/venv/../../../autograder",
]
GS_LINGER = ["/autograder/results/results.json", "/autograder/results/linger.txt"]


def _torch_index(folder: Path) -> str:
    """An index like PyTorch's CPU index (torch and the packages torch needs), fetched with pip's
    settings here: setup.sh's TENSORGRADE_TORCH_INDEX points at it instead of PyTorch's own."""
    pin = (REPO / "requirements/dev.txt").read_text().split("torch==")[1].split()[0]
    flat = folder / "wheels"
    cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "-q"]
    cmd += ["-d", str(flat), f"torch=={pin}"]
    if TORCH_INDEX != "pip":
        cmd += ["--index-url", TORCH_INDEX]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for wheel in flat.glob("*.whl"):
        project = folder / "simple" / wheel.name.split("-")[0].lower().replace("_", "-")
        project.mkdir(parents=True, exist_ok=True)
        wheel.rename(project / wheel.name)
    for project in (folder / "simple").iterdir():
        links = "".join(f'<a href="{w.name}">{w.name}</a>\n' for w in project.glob("*.whl"))
        (project / "index.html").write_text(f"<html><body>\n{links}</body></html>\n")
    flat.rmdir()
    return "file:///tmp/gs/simple"


@pytest.fixture(scope="module")
def gradescope(engine, image, course, workdir):
    """An image built the way Gradescope builds one: the zip unpacked to /autograder/source,
    run_autograder copied to /autograder, setup.sh run once as root (with the network)."""
    ctx = workdir / "gradescope-context"
    (ctx / "gs").mkdir(parents=True)
    shutil.copy(course.dist / "gradescope.zip", ctx / "gs" / "gradescope.zip")
    index = _torch_index(ctx / "gs")
    ca = Path(os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"))
    shutil.copy(ca, ctx / "gs" / "ca.crt")  # this machine's proxy, if any, signs with it
    (ctx / "Dockerfile").write_text(
        f"FROM {BASE}\n"
        "COPY gs /tmp/gs\n"
        "RUN mkdir -p /autograder/source /autograder/submission /autograder/results \\\n"
        " && python3 -m zipfile -e /tmp/gs/gradescope.zip /autograder/source \\\n"
        " && chmod +x /autograder/source/setup.sh /autograder/source/run_autograder \\\n"
        " && cp /autograder/source/run_autograder /autograder/run_autograder \\\n"
        " && apt-get update \\\n"
        f" && PIP_CERT=/tmp/gs/ca.crt TENSORGRADE_TORCH_INDEX={index} \\\n"
        "    /autograder/source/setup.sh \\\n"
        " && rm -rf /tmp/gs\n"
        "WORKDIR /autograder\n"
    )
    t0 = time.monotonic()
    proc = docker("build", "--force-rm", "--network", "host", "-t", GS_TAG, str(ctx), timeout=2400)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    _measured("Gradescope image (setup.sh included)", time.monotonic() - t0)
    assert "tensorgrade setup +" in proc.stdout and "ready" in proc.stdout
    return GS_TAG


def test_gradescope_setup_fails_loudly_without_the_zip(engine, image):
    proc = docker(
        "run", "--rm", "--network", "none", "--entrypoint", "bash", image, "-c",
        "python - <<'EOF' > /tmp/setup.sh && bash /tmp/setup.sh\n"
        "from tensorgrade.gradescope import SETUP_SH; print(SETUP_SH)\nEOF",
    )  # fmt: skip
    assert proc.returncode == 1
    assert "tensorgrade setup FAILED: /autograder/source holds no tensorgrade autograder" in (
        proc.stderr
    )


def test_gradescope_shaped_container_grades_like_the_bare_machine(
    gradescope, course, submissions, workdir, listener, interpreter_reachable_by_others
):
    """run_autograder once per submission, as root, Docker's default profile, 768 MB, half a
    CPU, with the host's network (Gradescope's may have one): same scores as the bare machine,
    and the student's code reaches neither /autograder nor the network."""
    bare = _bare(course, submissions, workdir)
    folder = workdir / "gradescope-submissions"
    _write_submissions(folder, course, GS_SNOOP, GS_LINGER, listener.port)
    got, logs = {}, {}
    for name in SUBMISSIONS:
        run = workdir / f"gs-{name}"
        (run / "submission").mkdir(parents=True)
        (run / "results").mkdir()
        shutil.copy(folder / f"{name}.ipynb", run / "submission" / f"{AID}.ipynb")
        meta = {"id": 4242, "users": [{"name": f"Student {name}", "sid": f"S-{name}"}]}
        (run / "submission_metadata.json").write_text(json.dumps(meta))
        t0 = time.monotonic()
        proc = docker(
            "run", "--rm", "--network", "host", "--memory", "768m", "--cpus", "0.5",
            "-v", f"{run / 'submission'}:/autograder/submission",
            "-v", f"{run / 'results'}:/autograder/results",
            "-v", f"{run / 'submission_metadata.json'}:/autograder/submission_metadata.json:ro",
            gradescope, "/autograder/run_autograder",
        )  # fmt: skip
        _measured(f"Gradescope run_autograder {name}", time.monotonic() - t0)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        got[name] = json.loads((run / "results" / "results.json").read_text())
        jsonschema.Draft202012Validator(SCHEMA).validate(got[name])
        logs[name] = proc.stdout
        _no_lingering_writes(run / "results")
    for name in SUBMISSIONS:
        assert f"submission of Student {name} (sid S-{name})" in logs[name], logs[name]
        assert got[name]["score"] == bare[name]["score"], (name, got[name]["extra_data"])
        if name != "broken":  # an unreadable upload is "ungradable" with Gradescope's message
            assert _question_scores(got[name]) == _question_scores(bare[name]), name
    assert got["broken"]["score"] == 0
    for name in ("solution", "snoop", "linger", "blank"):
        iso = got[name]["extra_data"]["isolation"]
        assert iso["level"] == "reduced" and iso["uid"] and iso["landlock"] and iso["seccomp"]
    _check_snoop(got["snoop"], GS_SNOOP, listener)
