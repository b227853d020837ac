"""Attacks on the sandbox's isolation, one submission each, graded as root with every layer
("full") and as root where namespaces are refused ("reduced": Docker's default profile), plus the
whole grader run as a plain user and two graders at once on one machine.

Each attack rides on the solution notebook: it must not cost the honest answers a point, must be
stopped (its cell prints what it got; the test reads that), and must leave nothing behind.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

from sandboxing import namespaces_here, uid_processes
from tensorgrade.judge import engine
from tensorgrade.judge.sandbox import Limits, Zygote
from tensorgrade.testfiles import load_tests

pytestmark = [pytest.mark.slow, pytest.mark.sandbox]

LIMITS = Limits(cell_timeout=20, call_timeout=10, submission_timeout=200, tmpfs_mb=256)
TOKEN = "tg-canvas-token-5f1e"
SHM_KEY = 0x54470009


@dataclass
class Case:
    name: str
    cell: str  # placeholders: {course}, {tests}, {others}, {results}
    stopped: str  # text the cell prints when the attack was stopped
    breached: str  # text it prints when it got through


CASES = [
    Case(
        "read_course_results_and_other_submissions",
        "import os\n"
        "got = []\n"
        "for p in [{tests!r}, {course!r}, {others!r}, {results!r}]:\n"
        "    try:\n"
        "        if os.path.isdir(p):\n"
        "            # the private root may hold empty stubs on the way to the interpreter's folders\n"
        "            # (a course under /tmp): a breach is seeing what the folder really holds\n"
        "            seen = set(os.listdir(p)) & {{'solutions', 'dist', 'tests', 'bob.ipynb'}}\n"
        "            got.append(('LISTED', p, seen) if seen else ('denied', p, 'nothing of it'))\n"
        "        else:\n"
        "            got.append(('READ', p, open(p).read(20)))\n"
        "    except OSError as e:\n"
        "        got.append(('denied', p, type(e).__name__))\n"
        "print('BREACH' if any(g[0] != 'denied' for g in got) else 'STOPPED', got)\n"
        "print('uid', os.getuid())",
        "STOPPED",
        "BREACH",
    ),
    Case(
        "grader_environment_token",
        "import os, glob\n"
        "blob = str(dict(os.environ))\n"
        "for p in glob.glob('/proc/[0-9]*/environ'):\n"
        "    try:\n"
        "        blob += open(p, 'rb').read().decode('latin-1')\n"
        "    except OSError:\n"
        "        pass\n"
        "try:\n"
        "    ppid = os.getppid()\n"
        "    maps = open(f'/proc/{{ppid}}/maps').read().splitlines()\n"
        "    with open(f'/proc/{{ppid}}/mem', 'rb') as mem:\n"
        "        for line in maps:\n"
        "            if '[stack]' in line or '[heap]' in line:\n"
        "                lo, hi = (int(x, 16) for x in line.split()[0].split('-'))\n"
        "                mem.seek(lo)\n"
        "                blob += mem.read(min(hi - lo, 1 << 22)).decode('latin-1')\n"
        "except (OSError, ValueError):\n"
        "    pass\n"
        f"print('BREACH' if {TOKEN!r} in blob else 'STOPPED')",
        "STOPPED",
        "BREACH",
    ),
    Case(
        "shared_memory_that_outlives_the_submission",
        "import ctypes, os\n"
        "kept = []\n"
        "try:\n"
        "    with open('/dev/shm/tg-persist-attack', 'wb') as f:\n"
        "        f.write(b'hidden inputs' * 1000)\n"
        "    kept.append('shm-file')\n"
        "except OSError:\n"
        "    pass\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"if libc.shmget({SHM_KEY}, 1 << 20, 0o1666) >= 0:\n"
        "    kept.append('sysv')\n"
        "print('STOPPED' if not kept else 'KEPT ' + ' '.join(kept))",
        "",  # where the sandbox has its own /dev/shm and IPC, making them is harmless
        "",
    ),
    Case(
        "fill_the_disk",
        "import os\n"
        "total = 0\n"
        "block = b'x' * (16 << 20)\n"
        "try:\n"
        "    for i in range(200):\n"
        "        with open(f'fill{{i}}.bin', 'wb') as f:\n"
        "            for _ in range(4):\n"
        "                f.write(block)\n"
        "                total += 16\n"
        "except OSError as e:\n"
        "    print('stopped', type(e).__name__)\n"
        "print('MiB', total)",
        "stopped",
        "MiB 12800",
    ),
    Case(
        "directory_tree_thousands_deep",
        "import os\n"
        "os.makedirs('deep', exist_ok=True)\n"
        "fd = os.open('deep', os.O_RDONLY)\n"
        "for i in range(3000):\n"
        "    os.mkdir('d', dir_fd=fd)\n"
        "    nxt = os.open('d', os.O_RDONLY, dir_fd=fd)\n"
        "    os.close(fd)\n"
        "    fd = nxt\n"
        "os.close(fd)\n"
        "os.chmod('deep', 0)\n"
        "print('STOPPED made')",
        "STOPPED",
        "BREACH",
    ),
    Case(
        "kill_every_process_it_can",
        "import os, signal\n"
        "try:\n"
        "    os.kill(-1, signal.SIGKILL)\n"
        "    print('STOPPED sent')\n"
        "except OSError as e:\n"
        "    print('STOPPED', type(e).__name__)",
        "STOPPED",
        "BREACH",
    ),
    Case(
        "daemon_that_outlives_grading",
        "import os, subprocess\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        subprocess.Popen(['sleep', '300'])\n"
        "        import time\n"
        "        time.sleep(300)\n"
        "    os._exit(0)\n"
        "print('STOPPED forked')",
        "STOPPED",
        "BREACH",
    ),
]


@pytest.fixture(scope="module")
def a1(built_course):
    a = built_course["01_tensors"]
    return a, load_tests(a.tests_dir)


@pytest.fixture(scope="module")
def targets(a1):
    """World-readable decoys of what a sandbox must never see: other submissions, results."""
    a, _ = a1
    base = Path(tempfile.mkdtemp(prefix="tg-targets-"))
    base.chmod(0o755)
    for name in ("others", "results"):
        (base / name).mkdir()
        (base / name).chmod(0o755)
        (base / name / "bob.ipynb").write_text("other student's work")
        (base / name / "bob.ipynb").chmod(0o644)
    yield {
        "tests": str(a.tests_dir / "q1.py"),
        "course": str(a.root),
        "others": str(base / "others"),
        "results": str(base / "results"),
    }
    shutil.rmtree(base, ignore_errors=True)


def _nb(a, cell: str) -> bytes:
    nb = nbformat.read(a.solution, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(cell))
    return nbformat.writes(nb).encode()


def _leftovers() -> list[str]:
    """What sandboxes could have left on the machine: workdirs, /dev/shm files, SysV segments."""
    zyg = Zygote.get()
    left = [p for p in os.listdir(zyg.base) if p != "root"] if zyg is not None else []
    left += glob.glob("/dev/shm/tg-persist-*")
    shm = Path("/proc/sysvipc/shm")
    if shm.exists() and any(
        line.split()[0] == str(SHM_KEY) for line in shm.read_text().splitlines()[1:]
    ):
        left.append(f"SysV segment {SHM_KEY:#x}")
    return left


@pytest.mark.root
@pytest.mark.parametrize("mode", ["full", "reduced"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_isolation_attack(case, mode, a1, targets, monkeypatch, interpreter_reachable_by_others):
    if mode == "full" and not namespaces_here():
        pytest.skip("needs root and namespaces")
    if os.geteuid() != 0:
        pytest.skip("the reduced mode here is root without namespaces (Docker's defaults)")
    a, specs = a1
    monkeypatch.setenv("CANVAS_API_TOKEN", TOKEN)
    cell = case.cell.format(**targets)
    r = engine.grade(
        _nb(a, cell),
        f"{case.name}.ipynb",
        a.id,
        specs,
        limits=LIMITS,
        files_from=a.student_dir,
        slot=5,
        forbidden=[a.root / "solutions", a.root / "dist", a.root / "tests"],
        isolation=mode,
    )
    out = r.student_output
    assert r.status == "graded" and r.score == 100, (r.reason, out)
    assert r.isolation["level"] == mode, r.isolation
    assert r.isolation["uid"] and r.isolation["landlock"] and r.isolation["seccomp"]
    if case.breached:
        assert case.breached not in out, out
    if case.stopped and not (case.name == "fill_the_disk" and mode == "reduced"):
        assert case.stopped in out, (r.reason, out)
    if case.name == "shared_memory_that_outlives_the_submission" and mode == "reduced":
        assert "STOPPED" in out, out  # no private /dev/shm or IPC: Landlock and seccomp refuse
    if case.name == "fill_the_disk" and mode == "reduced":  # on disk: the supervisor's watchdog
        assert f"grew past the {LIMITS.tmpfs_mb} MiB allowed" in r.reason, (r.reason, out)
    assert TOKEN not in json.dumps(r.to_gradescope())
    if "print('uid'" in case.cell:
        assert f"uid {r.sandbox_uids[0]}" in out, out
    for uid in r.sandbox_uids:
        assert uid_processes(uid) == [], "a process of the sandbox survived grading"
    assert _leftovers() == [], "a sandbox left something on the machine"
    if case.name == "fill_the_disk" and mode == "full":
        mib = int(out.split("MiB")[-1].split()[0])
        assert mib <= LIMITS.tmpfs_mb, f"wrote {mib} MiB into a {LIMITS.tmpfs_mb} MiB tmpfs"


# ---- the whole grader, as a plain user and twice at once --------------------------------------


def _course_for_others(built_course, where: Path) -> Path:
    """A copy of the built course that a plain user can read (CI clones under /root, 0700)."""
    course = where / "course"
    for part in ("assignments", "solutions", "dist"):
        shutil.copytree(built_course["01_tensors"].root / part, course / part)
    subprocess.run(["chmod", "-R", "a+rX", str(where)], check=True)
    return course


def _grade_cli(
    course: Path, subs: Path, out: Path, prefix: list[str], env: dict
) -> subprocess.Popen:
    cmd = [*prefix, sys.executable, "-m", "tensorgrade", "grade", str(subs), "-a", "01_tensors"]
    cmd += ["-o", str(out), "-q"]
    env = {**env, "TENSORGRADE_ROOT": str(course), "CANVAS_API_TOKEN": TOKEN}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start the grader as a plain user")
def test_grader_as_a_plain_user_keeps_the_student_from_course_network_and_environment(
    built_course, interpreter_reachable_by_others
):
    a = built_course["01_tensors"]
    where = Path(tempfile.mkdtemp(prefix="tg-user-"))
    try:
        course = _course_for_others(built_course, where)
        subs, out, home = where / "subs", where / "results", where / "home"
        subs.mkdir()
        home.mkdir()
        hidden = course / "dist" / "01_tensors" / "tests" / "q1.py"
        targets = {
            "tests": str(hidden),
            "course": str(course),
            "others": str(subs),
            "results": str(out),
        }
        (subs / "ada.ipynb").write_bytes(a.solution.read_bytes())
        (subs / "snoop.ipynb").write_bytes(_nb(a, CASES[0].cell.format(**targets)))
        (subs / "token.ipynb").write_bytes(_nb(a, CASES[1].cell))
        net = (
            "import socket\n"
            "try:\n"
            "    socket.create_connection(('127.0.0.1', 22), timeout=2)\n"
            "    print('BREACH')\n"
            "except OSError as e:\n"
            "    print('STOPPED', type(e).__name__)"
        )
        (subs / "net.ipynb").write_bytes(_nb(a, net))
        (subs / "daemon.ipynb").write_bytes(_nb(a, CASES[-1].cell))
        subprocess.run(["chmod", "-R", "a+rX", str(subs)], check=True)
        os.chown(home, 65534, 65534)
        os.chown(where, 65534, 65534)
        env = {"PATH": os.environ["PATH"], "HOME": str(home), "TMPDIR": str(home)}
        proc = _grade_cli(
            course, subs, out, ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"], env
        )
        stdout, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, stderr[-3000:]
        results = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/results.json")}
        # with no PID namespace, the daemon's double fork is caught by the zygote (a subreaper);
        # nothing of any sandbox, nor a readied spare (-j 1), runs on after the grader ended
        assert uid_processes(65534) == []
        assert set(results) == {"ada", "snoop", "token", "net", "daemon"}
        for name, data in results.items():
            extra = data["extra_data"]
            assert data["score"] == 100, (name, extra["reason"])
            iso = extra["isolation"]
            assert iso["level"] == "reduced" and iso["landlock"] and iso["seccomp"], iso
            assert not iso["uid"] and extra["sandbox_uids"] == []
            assert TOKEN not in json.dumps(data)
            if name != "ada":
                assert "STOPPED" in extra["student_output"], (name, extra["student_output"])
                assert "BREACH" not in extra["student_output"]
        assert "isolation reduced" in stderr
    finally:
        shutil.rmtree(where, ignore_errors=True)


@pytest.mark.root
@pytest.mark.skipif(not namespaces_here(), reason="needs root and namespaces")
def test_two_graders_at_once_on_one_machine_do_not_touch_each_other(built_course, tmp_path):
    """Each with its own TMPDIR (two containers, two Slurm jobs with a private /tmp): both draw
    sandbox uids and kill sandboxes at the same time, and every score equals grading alone."""
    a = built_course["01_tensors"]
    daemon = CASES[-1].cell
    procs, outs = [], []
    for k in range(2):
        subs, out, tmp = tmp_path / f"subs{k}", tmp_path / f"out{k}", tmp_path / f"tmp{k}"
        subs.mkdir()
        tmp.mkdir()
        for i in range(2):
            (subs / f"ada{i}.ipynb").write_bytes(a.solution.read_bytes())
        (subs / "daemon.ipynb").write_bytes(_nb(a, daemon))
        env = {**os.environ, "TMPDIR": str(tmp)}
        procs.append(_grade_cli(a.root, subs, out, [], env))
        outs.append(out)
    for p in procs:
        _, err = p.communicate(timeout=900)  # a grader that hangs fails here (TimeoutExpired)
        assert p.returncode == 0, err[-3000:]
    for out in outs:
        results = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/results.json")}
        assert set(results) == {"ada0", "ada1", "daemon"}
        for name, data in results.items():
            extra = data["extra_data"]
            assert data["score"] == 100, (name, extra["reason"])
            assert "ended the process" not in extra["reason"], extra["reason"]
            assert extra["isolation"]["level"] == "full"
            for uid in extra["sandbox_uids"]:
                assert uid_processes(uid) == []
