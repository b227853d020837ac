"""The sandbox's guarantees where graders really run: as root, as a plain user, in a chroot whose
``/`` is not a mount point, and next to another grader. Each test fails if its guarantee breaks.

The unprivileged mode runs the grader itself under ``setpriv`` (a user with no capabilities), so
these tests need root to *start*; what they check is what the grader does without it.
"""

from __future__ import annotations

import ast
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import tensorgrade
from sandboxing import namespaces_here
from tensorgrade import protocol
from tensorgrade.judge.sandbox import Limits, Sandbox, Zygote
from tensorgrade.root import cleanup, uids

pytestmark = pytest.mark.sandbox
PKG = Path(tensorgrade.__file__).parent
NOBODY = 65534


# ---- layout ---------------------------------------------------------------------------------


def _imports(path: Path) -> set[str]:
    """Modules of tensorgrade a file imports (relative imports resolved)."""
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(parts[: len(parts) - node.level])
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [f"{mod}.{a.name}" for a in node.names] if not node.module else [mod]
            out.update(names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("tensorgrade")}


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("confined", ("tensorgrade.judge", "tensorgrade.root", "tensorgrade.grading")),
        ("root", ("tensorgrade.judge", "tensorgrade.grading")),
        ("judge", ("tensorgrade.root", "tensorgrade.confined")),
    ],
)
def test_imports_point_one_way(package, forbidden):
    """Confined code never imports the judge or root code; root code never the judge; the judge
    reaches the zygote only as a process (``-m tensorgrade.root.zygote``), never by import."""
    files = sorted((PKG / package).glob("*.py"))
    assert files
    bad = {
        f"{f.name} imports {m}"
        for f in files
        for m in _imports(f)
        if any(m == x or m.startswith(x + ".") for x in forbidden)
    }
    assert not bad, bad


def test_import_check_sees_relative_imports():
    """The check above would catch a violation (it resolves ``from ..judge import x``)."""
    found = _imports(PKG / "root" / "zygote.py")
    assert "tensorgrade.confined" in found or any(
        m.startswith("tensorgrade.confined") for m in found
    )


# ---- the zygote's request: small, typed, validated ---------------------------------------


def _limits(**over) -> dict:
    d = {
        "processes": 64,
        "file_bytes": 1 << 20,
        "cpu_seconds": 10,
        "open_files": 256,
        "memory_bytes": 0,
        "tmpfs_bytes": 1 << 24,
        "stdout_chars": 1000,
    }
    return {**d, **over}


@pytest.mark.parametrize(
    "msg",
    [
        {"op": "spawn", "slot": 0, "limits": _limits(), "uid": 0},  # a privilege decision
        {"op": "spawn", "slot": 0, "limits": _limits(), "cfg": {"confine": False}},
        {"op": "spawn", "slot": 0, "limits": {**_limits(), "newroot": "/"}},
        {"op": "spawn", "slot": -1, "limits": _limits()},
        {"op": "spawn", "slot": True, "limits": _limits()},
        {"op": "spawn", "slot": 0, "limits": _limits(processes="512")},
        {"op": "spawn", "slot": 0, "limits": _limits(processes=1)},
        {"op": "spawn", "slot": 0},
        {"op": "reap", "pid": 1},  # never init
        {"op": "reap", "pid": 5, "uid": 0, "base": "/"},
        {"op": "status", "pid": 5, "timeout": 1e9},
        {"op": "exec", "cmd": "sh"},
        [1, 2, 3],
    ],
)
def test_zygote_refuses_requests_that_are_not_ours(msg):
    with pytest.raises(protocol.ProtocolError):
        protocol.parse_zygote_request(json.dumps(msg).encode())


def test_zygote_accepts_a_well_formed_spawn():
    req = protocol.parse_zygote_request(
        json.dumps({"op": "spawn", "slot": 3, "limits": _limits()}).encode()
    )
    assert isinstance(req, protocol.Spawn) and req.slot == 3 and req.limits.processes == 64


def test_a_live_zygote_answers_a_forged_request_with_a_refusal_and_keeps_working():
    zyg = Zygote.get()
    assert zyg is not None, Zygote.failure
    forged = {"op": "spawn", "slot": 0, "limits": _limits(), "cfg": {"own_uid": False}}
    with zyg._lock:
        zyg.sock.sendall(json.dumps(forged).encode())
        answer = protocol.parse_spawned(zyg.sock.recv(protocol.MAX_MESSAGE))
    assert answer.error.startswith("refused")
    box = Sandbox(0, Limits())
    box.start()
    try:
        h, _, _ = box.request({"op": "run", "source": "print(6 * 7)"}, 30)
        assert h["stdout"].strip() == "42"
    finally:
        box.close()


def test_the_zygote_starts_with_an_allowlisted_environment(monkeypatch):
    """A grader's secrets (an LMS token) never reach the zygote, so no sandbox can read them."""
    monkeypatch.setenv("CANVAS_API_TOKEN", "tg-secret-token-123")
    Zygote.configure([Path(tempfile.gettempdir()) / "tg-env-test"], namespaces=True)
    zyg = Zygote.get()
    assert zyg is not None, Zygote.failure
    environ = Path(f"/proc/{zyg.proc.pid}/environ").read_bytes()
    assert b"tg-secret-token-123" not in environ
    assert b"CANVAS_API_TOKEN" not in environ
    box = Sandbox(0, Limits())
    box.start()
    try:
        src = (
            "import os\n"
            "seen = []\n"
            "for p in ['self', '1', str(os.getppid())]:\n"
            "    try:\n"
            "        seen.append(open(f'/proc/{p}/environ', 'rb').read().decode('latin-1'))\n"
            "    except OSError:\n"
            "        pass\n"
            "print('LEAK' if 'tg-secret' in ''.join(seen) + str(os.environ) else 'clean')"
        )
        h, _, _ = box.request({"op": "run", "source": src}, 30)
        assert h["stdout"].strip() == "clean", h
    finally:
        box.close()


# ---- uids -----------------------------------------------------------------------------------


def test_a_held_uid_is_not_handed_out_again():
    first, lock = uids.allocate(random.Random(7))
    try:
        second, lock2 = uids.allocate(random.Random(7))  # the same draw: must move on
        lock2.close()
        assert second != first
        assert uids.BASE_UID <= first < uids.BASE_UID + uids.SPAN
    finally:
        lock.close()
    again, lock3 = uids.allocate(random.Random(7))  # released: free again
    lock3.close()
    assert again == first


@pytest.mark.skipif(os.geteuid() != 0, reason="starting a process as another uid needs root")
def test_a_uid_some_process_runs_as_is_in_use():
    uid = uids.BASE_UID + 12345
    assert not uids.uid_in_use(uid)
    proc = subprocess.Popen(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "sleep", "30"]
    )
    try:
        for _ in range(100):
            if uids.uid_in_use(uid):
                break
            __import__("time").sleep(0.05)
        assert uids.uid_in_use(uid)
    finally:
        proc.kill()
        proc.wait()


# ---- cleanup ----------------------------------------------------------------------------------


def test_a_tree_thousands_deep_with_locked_folders_and_symlinks_is_removed(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    top = tmp_path / "work"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY)
    for i in range(3000):  # paths far longer than PATH_MAX: only relative steps work
        os.mkdir("d", dir_fd=fd)
        if i % 500 == 0:
            os.symlink(str(outside), "link", dir_fd=fd)
            os.symlink(str(tmp_path), "dirlink", dir_fd=fd)
        nxt = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nxt
    os.close(fd)
    locked = top / "d" / "locked"
    locked.mkdir()
    (locked / "f").write_text("x")
    locked.chmod(0)
    assert cleanup.remove_tree(str(top))
    assert not top.exists()
    assert outside.read_text() == "keep me"


# ---- the doctor, as root, as a user, in a chroot ---------------------------------------------


def _doctor(cmd_prefix: list[str], env: dict | None = None, timeout: int = 180) -> dict:
    proc = subprocess.run(
        [*cmd_prefix, sys.executable, "-m", "tensorgrade", "doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd="/",
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _attempts(report: dict) -> dict[str, str]:
    return {a["name"]: a["outcome"] for a in report["attempts"]}


def _layers(report: dict) -> dict[str, bool]:
    return {layer["name"]: layer["held"] for layer in report["layers"]}


@pytest.mark.skipif(not namespaces_here(), reason="needs root and namespaces")
def test_doctor_as_root_finds_every_layer_and_every_attempt_stopped():
    r = _doctor([])
    assert r["error"] == "", r["error"]
    assert r["level"] == "full" and all(_layers(r).values()), r["layers"]
    assert r["ok"], r["attempts"]
    tried = _attempts(r)
    assert tried["own_uid"].startswith("denied: ran as uid 19")
    assert all(v.startswith("denied") for v in tried.values()), tried


def _as_user(uid: int = NOBODY) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]


def _user_env(tmp: Path) -> dict:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp), "TMPDIR": str(tmp)}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start the grader as a plain user")
def test_doctor_as_a_plain_user_still_has_landlock_and_seccomp(interpreter_reachable_by_others):
    """Without root there are no namespaces and no uid of its own, yet the kernel still keeps the
    student's code from the network, from a file the grader can read, and from its environment."""
    tmp = Path(tempfile.mkdtemp(prefix="tg-user-"))
    os.chown(tmp, NOBODY, NOBODY)
    try:
        r = _doctor(_as_user(), env=_user_env(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert r["error"] == "", r["error"]
    held = _layers(r)
    assert r["euid"] == NOBODY and r["level"] == "reduced"
    assert held["landlock"] and held["seccomp"], r["layers"]
    assert not held["uid"] and not held["net"] and not held["mount"]
    why = {layer["name"]: layer["detail"] for layer in r["layers"]}
    assert "not root" in why["uid"] and "not root" in why["net"]
    tried = _attempts(r)
    for name in ("tcp_connect", "inet_socket", "read_grader_file", "grader_environment"):
        assert tried[name].startswith("denied"), (name, tried[name])
    assert tried["own_uid"] == "allowed: ran as the grader's own uid"  # reported, not hidden


# In a private copy of the mount table made *shared* (as systemd makes the host's), so that a
# sandbox mount that escaped its namespace would show up here; then a plain chroot.
CHROOT_SCRIPT = r"""
set -e
mount --make-rshared /
R="$1"; shift
for d in "$@"; do
    mkdir -p "$R$d"
    mount --bind "$d" "$R$d"
done
mkdir -p "$R/tmp" && chmod 1777 "$R/tmp"
set +e
chroot "$R" sh -c 'if mountpoint -q /; then echo "/ IS A MOUNT POINT"; exit 3; fi; cd / && exec "$0" -m tensorgrade doctor --json' "$PY"
echo "LEAKED-MOUNTS $(grep -c tg-zygote /proc/self/mountinfo)"
"""


@pytest.mark.skipif(not namespaces_here(), reason="needs root and namespaces")
def test_private_root_works_in_a_chroot_whose_root_is_not_a_mount_point(
    interpreter_reachable_by_others,
):
    if not shutil.which("mountpoint"):
        pytest.skip("util-linux mountpoint missing")
    r = Path(tempfile.mkdtemp(prefix="tg-chroot-"))
    dirs = ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc", "/proc", "/sys", "/dev"]
    dirs = [d for d in dirs if os.path.isdir(d) and not os.path.islink(d)]
    links = [d for d in ("/bin", "/sbin", "/lib", "/lib64") if os.path.islink(d)]
    for d in links:
        os.symlink(os.readlink(d), str(r) + d)
    dirs += sorted({sys.base_prefix, sys.prefix, str(PKG.parent.parent)})
    try:
        proc = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", CHROOT_SCRIPT, "sh"]
            + [str(r), *dirs],
            capture_output=True,
            text=True,
            timeout=240,
            env={**os.environ, "PY": sys.executable},
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        text, _, leaked = proc.stdout.rpartition("LEAKED-MOUNTS")
        report = json.loads(text)
    finally:
        subprocess.run(["umount", "-R", str(r)], capture_output=True)
        shutil.rmtree(r, ignore_errors=True)
    held = _layers(report)
    assert held["mount"], report["layers"]
    assert report["level"] == "full" and report["ok"], report
    assert leaked.strip() == "0", "a sandbox mount propagated out of its namespace"


@pytest.mark.skipif(not namespaces_here(), reason="needs root and namespaces")
def test_doctor_tries_cuda_inside_the_sandbox_and_bisects_a_failure(monkeypatch):
    """On a GPU machine the doctor runs a CUDA operation in a confined sandbox; when it fails it
    tries again without namespaces. Here (no GPU) CUDA fails both times: both are reported."""
    from tensorgrade.judge import doctor

    monkeypatch.setattr(doctor, "_cuda_present", lambda: True)
    r = doctor.diagnose("full")
    tried = {a.name: a for a in r.attempts}
    assert tried["cuda"].outcome.startswith("denied") and not tried["cuda"].ok
    assert "cuda_without_namespaces" in tried
    assert not r.ok
    assert "CUDA fails also without namespaces" in doctor.render(r)
