"""`tensorgrade doctor`: which isolation layers this machine gives a sandbox, proven by trying.

It starts a real sandbox through the zygote, exactly as grading does, reads back what held layer
by layer, and then tries from inside what a student would: the network, a file of the grader's,
the grader's environment, another uid's processes, and CUDA where a GPU is visible. The first
command an instructor runs on a new machine; its output is what a bug report attaches.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from ..protocol import LAYERS
from .sandbox import Limits, Sandbox, SandboxDied, SandboxTimeout, Zygote, _cuda_present

WHAT = {
    "uid": "runs as a uid of its own (not root, not the grader)",
    "net": "network namespace: no interface but loopback",
    "mount": "private root: the machine's files do not exist; tmpfs workdir, /tmp, /dev/shm",
    "pid": "PID namespace: sees and kills only its own processes",
    "ipc": "IPC namespace: no shared SysV IPC or POSIX queues",
    "landlock": "Landlock: reads only the system and Python, writes only its workdir, no TCP",
    "seccomp": "seccomp: no new network sockets, ptrace, mount, bpf, keyrings, namespaces",
}
FIX = {
    "uid": "run the grader as root (it drops to a fresh uid per sandbox; use --judge-user to "
    "run the hidden tests unprivileged)",
    "net": "root with CAP_SYS_ADMIN: on a host run as root; in Docker add `--cap-add SYS_ADMIN` "
    "(and `--security-opt apparmor=unconfined` where AppArmor is on)",
    "mount": "as for the namespaces; the error above says which mount failed",
    "pid": "as for the network namespace",
    "ipc": "as for the network namespace",
    "landlock": "a kernel >= 5.13 with Landlock enabled (`cat /sys/kernel/security/lsm` lists "
    "landlock; else add lsm=...,landlock to the kernel command line); ABI >= 4 also denies TCP; "
    "in Docker a seccomp profile that allows landlock_* (Docker >= 23's default does)",
    "seccomp": "a kernel with CONFIG_SECCOMP_FILTER (every mainstream distribution has it)",
}

PROBE = r"""
import json, os, socket
out = {"uid": os.getuid()}
def attempt(key, fn):
    try:
        out[key] = "allowed: " + str(fn())[:80]
    except Exception as e:
        out[key] = "denied: " + type(e).__name__
attempt("tcp_connect", lambda: socket.create_connection(("127.0.0.1", PORT), timeout=2).close())
attempt("inet_socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close())
attempt("read_grader_file", lambda: open(SECRET_FILE).read())
def environ_of(pid):
    with open(f"/proc/{pid}/environ", "rb") as f:
        return f.read()
def leaked():
    found = [p for p in os.listdir("/proc") if p.isdigit()]
    for p in found:
        try:
            if SECRET_VALUE.encode() in environ_of(p):
                return "secret in /proc/" + p
        except OSError:
            pass
    if SECRET_VALUE in json.dumps(dict(os.environ)):
        return "secret in own environment"
    raise PermissionError("not found")
attempt("grader_environment", leaked)
def grader_process():
    for p in os.listdir("/proc"):
        try:
            if p.isdigit() and b"\0doctor\0" in open(f"/proc/{p}/cmdline", "rb").read():
                return "pid " + p
        except OSError:
            pass
    raise LookupError("not visible")
attempt("see_grader_process", grader_process)
if CUDA:
    def cuda():
        import torch
        return float(torch.ones(4, device="cuda").sum())
    attempt("cuda", cuda)
print(json.dumps(out))
"""


@dataclass
class Layer:
    name: str
    held: bool
    what: str
    detail: str  # the system's own error text when it did not hold
    fix: str


@dataclass
class Attempt:
    name: str
    expected_denied: bool
    outcome: str  # "allowed: ..." or "denied: <exception>"

    @property
    def ok(self) -> bool:
        return self.outcome.startswith("denied") == self.expected_denied


@dataclass
class Report:
    euid: int
    level: str
    layers: list[Layer]
    attempts: list[Attempt]
    error: str = ""  # the sandbox did not start

    @property
    def ok(self) -> bool:
        return not self.error and all(a.ok for a in self.attempts)


def diagnose(isolation: str = "full") -> Report:
    """Start one sandbox as grading would and try, from inside, what a student would."""
    secret_dir = Path(tempfile.mkdtemp(prefix="tg-probe-"))
    os.chmod(secret_dir, 0o755)  # world-readable on purpose: only the sandbox layers stop it
    secret_file = secret_dir / "grader-file.txt"
    secret_file.write_text("hidden test source\n")
    os.chmod(secret_file, 0o644)
    value = secrets.token_hex(16)
    os.environ["TENSORGRADE_DOCTOR_SECRET"] = value  # the grader's environment: must not leak
    listener = socket.create_server(("127.0.0.1", 0))
    Zygote.configure([secret_dir], namespaces=isolation == "full")
    box = Sandbox(0, Limits(startup_timeout=120, cell_timeout=60))
    try:
        box.start()
    except (SandboxDied, SandboxTimeout) as e:
        return Report(os.geteuid(), "none", [], [], error=str(e))
    try:
        iso = box.isolation
        src = (
            PROBE.replace("PORT", str(listener.getsockname()[1]))
            .replace("SECRET_FILE", repr(str(secret_file)))
            .replace("SECRET_VALUE", repr(value))
            .replace("CUDA", repr(_cuda_present()))
        )
        header, _, _ = box.request({"op": "run", "source": src}, 120)
        found = json.loads(header.get("stdout", "").strip().splitlines()[-1])
    except (SandboxDied, SandboxTimeout, ValueError, IndexError) as e:
        return Report(os.geteuid(), iso.level, [], [], error=f"the probe failed: {e}")
    finally:
        box.close()
        listener.close()
        os.environ.pop("TENSORGRADE_DOCTOR_SECRET", None)
        secret_file.unlink()
        secret_dir.rmdir()
    layers = [
        Layer(k, getattr(iso, k), WHAT[k], _why(iso.errors, k), "" if getattr(iso, k) else FIX[k])
        for k in LAYERS
    ]
    attempts = [
        Attempt(k, True, found.get(k, "denied: not tried"))
        for k in (
            "tcp_connect",
            "inet_socket",
            "read_grader_file",
            "grader_environment",
            "see_grader_process",
        )
    ]
    attempts.append(Attempt("own_uid", True, _uid_outcome(found.get("uid"))))
    if "cuda" in found:
        attempts.append(Attempt("cuda", False, found["cuda"]))
        if found["cuda"].startswith("denied") and isolation == "full" and iso.mount:
            attempts.append(_cuda_without_namespaces())
    return Report(os.geteuid(), iso.level, layers, attempts)


def _cuda_without_namespaces() -> Attempt:
    """CUDA failed with every layer: try once more without namespaces and the private root (uid,
    Landlock and seccomp kept), so the report says which side of that line the failure is on."""
    again = diagnose("reduced")
    cuda = next((a.outcome for a in again.attempts if a.name == "cuda"), "denied: not tried")
    return Attempt("cuda_without_namespaces", False, cuda)


def _why(errors: dict[str, str], layer: str) -> str:
    if layer in errors:
        return errors[layer]
    if layer in ("net", "pid", "ipc", "mount") and "namespaces" in errors:
        return errors["namespaces"]
    return ""


def _uid_outcome(uid: object) -> str:
    if uid == 0:
        return "allowed: ran as root"
    if uid == os.getuid():
        return "allowed: ran as the grader's own uid"
    return f"denied: ran as uid {uid}"


def render(r: Report) -> str:
    who = "root" if r.euid == 0 else f"uid {r.euid} (not root)"
    lines = [f"tensorgrade doctor: grader running as {who}, kernel {os.uname().release}"]
    if r.error:
        lines += [f"the sandbox could not start: {r.error}"]
        return "\n".join(lines)
    lines += [f"isolation level: {r.level}", "", "layer     held  what / why not / what to change"]
    for layer in r.layers:
        lines.append(f"{layer.name:<9} {'yes' if layer.held else 'NO':<5} {layer.what}")
        if not layer.held:
            lines.append(f"{'':16}why: {layer.detail or 'unknown'}")
            lines.append(f"{'':16}fix: {layer.fix}")
    lines += ["", "tried from inside a sandbox         outcome"]
    for a in r.attempts:
        mark = "ok " if a.ok else "BAD"
        lines.append(f"{mark} {a.name:<32} {a.outcome}")
    names = {a.name: a for a in r.attempts}
    if "cuda_without_namespaces" in names:
        works = names["cuda_without_namespaces"].ok
        lines.append(
            "CUDA works without namespaces and the private root: one of those layers stops it "
            "(grade with --isolation reduced until it is found)"
            if works
            else "CUDA fails also without namespaces: the uid, Landlock, seccomp or the driver"
        )
    lines.append("")
    lines.append(
        "every check holds"
        if r.ok
        else "SOME CHECKS FAILED: a student's code could reach what is marked BAD"
    )
    return "\n".join(lines)


def main(as_json: bool, isolation: str) -> int:
    """Print the report; exit 0 when every check held, 1 when one did not (or no sandbox)."""
    r = diagnose(isolation)
    if as_json:
        print(json.dumps({**asdict(r), "ok": r.ok}, indent=1))
    else:
        print(render(r))
    sys.stdout.flush()
    return 0 if r.ok else 1
