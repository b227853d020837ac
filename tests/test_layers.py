"""The confinement layers the sandbox applies to itself: Landlock and the seccomp filter.

Each live test forks a child that applies a layer to itself, tries what a student's code might
try, reports through a pipe and exits, so the pytest process itself is never restricted. Every
check that something is denied is paired with one that the neighbouring legitimate thing still
works: a layer that denies everything is as broken as one that denies nothing.
"""

from __future__ import annotations

import ctypes
import errno
import importlib
import importlib.util
import json
import os
import platform
import re
import socket
import struct
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from tensorgrade.confined import landlock, seccomp

LINUX_ONLY = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long
CLONE_NEWNET, CLONE_NEWUSER, SIGCHLD = 0x40000000, 0x10000000, 17


def in_child(probe: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run `probe` in a forked child and return the dict it produced (JSON through a pipe)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            os.close(r)
            try:
                out: dict[str, Any] = {"ok": probe()}
            except BaseException as exc:  # report everything, even SystemExit
                out = {"error": "".join(traceback.format_exception(exc))}
            with open(w, "w") as pipe:
                json.dump(out, pipe)
        finally:
            os._exit(0)
    os.close(w)
    with open(r) as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"child ended with {status:#x}: {data!r}"
    out = json.loads(data)
    if "error" in out:
        pytest.fail("the child failed:\n" + out["error"])
    return out["ok"]


def attempt(action: Callable[[], object]) -> str:
    """'ok', or the name of the exception and its errno: what the probe saw."""
    try:
        action()
    except OSError as exc:
        return f"{type(exc).__name__}:{errno.errorcode.get(exc.errno or 0, exc.errno)}"
    return "ok"


def raw(rc: int) -> str:
    """'ok', or the errno name of a libc call that returned -1."""
    return "ok" if rc != -1 else errno.errorcode[ctypes.get_errno()]


def unused_stdlib_module() -> str:
    """A standard-library module this process has not imported yet, so importing it reads files."""
    for name in ("colorsys", "wave", "netrc", "sched", "zipapp", "this"):
        if name not in sys.modules and importlib.util.find_spec(name):
            return name
    raise AssertionError("every candidate module is already imported")


# --- Landlock ---------------------------------------------------------------------------------

ABI = landlock.abi_version()
needs_landlock = pytest.mark.skipif(
    ABI == 0, reason="the kernel has no Landlock (or it is not in the lsm= list)"
)


def interpreter_paths() -> list[str]:
    """What a confined Python needs to read: its prefixes and the system's libraries."""
    import tensorgrade

    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths |= {p for p in sys.path if p and os.path.isdir(p)}
    paths.add(str(Path(tensorgrade.__file__).resolve().parents[1]))
    return sorted(paths) + ["/usr", "/lib", "/lib64", "/etc", "/nonexistent/is/skipped"]


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    d = {name: tmp_path / name for name in ("writable", "hidden", "readonly")}
    for path in d.values():
        path.mkdir()
    (d["hidden"] / "secret.txt").write_text("secret")
    (d["hidden"] / "allowed.txt").write_text("allowed")
    (d["readonly"] / "data.txt").write_text("data")
    return d


@LINUX_ONLY
def test_abi_version_never_raises() -> None:
    assert isinstance(ABI, int) and ABI >= 0


def test_landlock_struct_layouts() -> None:
    assert ctypes.sizeof(landlock._PathBeneathAttr) == 12  # packed: u64 + s32
    assert ctypes.sizeof(landlock._RulesetAttr) == 24
    assert landlock._handled_fs(1) == 0x1FFF
    assert landlock._handled_fs(4) == 0x7FFF
    assert landlock._handled_fs(7) == 0xFFFF
    for abi, size, net, scoped in [(1, 8, 0, 0), (3, 8, 0, 0), (4, 16, 3, 0), (5, 16, 3, 0)]:
        attr, got = landlock._ruleset_attr(abi)
        assert (got, attr.handled_access_net, attr.scoped) == (size, net, scoped)
    attr, got = landlock._ruleset_attr(7)
    assert (got, attr.handled_access_fs, attr.handled_access_net, attr.scoped) == (24, 0xFFFF, 3, 3)


@pytest.mark.sandbox
@LINUX_ONLY
@needs_landlock
@pytest.mark.parametrize("abi", range(1, max(ABI, 1) + 1), ids=lambda abi: f"abi{abi}")
def test_landlock_denies_what_no_rule_grants(
    abi: int, dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each ABI up to the kernel's: a newer kernel honours an older ruleset exactly as an older
    kernel would, so one machine checks the code path of every ABI we might meet in CI."""
    parent = os.getpid()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract_name = f"\0tensorgrade-test-layers-{parent}"
    abstract.bind(abstract_name)
    abstract.listen()
    hidden, ro, rw = dirs["hidden"], dirs["readonly"], dirs["writable"]

    def probe() -> dict[str, Any]:
        module = unused_stdlib_module()
        monkeypatch.setattr(landlock, "abi_version", lambda: abi)
        result = landlock.restrict(
            readonly=[*interpreter_paths(), str(ro), str(hidden / "allowed.txt")],
            writable=[str(rw)],
            devices=["/dev/null", "/dev/does-not-exist"],
        )
        out: dict[str, Any] = {"result": asdict(result)}

        def bind_tcp() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))

        def connect_abstract() -> None:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(abstract_name)

        def grandchild_reads_hidden() -> None:
            pid = os.fork()
            if pid == 0:
                os._exit(3 if attempt(lambda: (hidden / "secret.txt").read_text()) == "ok" else 0)
            _, status = os.waitpid(pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                raise AssertionError("a forked grandchild escaped the ruleset")

        checks: dict[str, Callable[[], object]] = {
            "read_hidden": lambda: (hidden / "secret.txt").read_text(),
            "list_hidden": lambda: os.listdir(hidden),
            "read_file_rule": lambda: (hidden / "allowed.txt").read_text(),
            "read_readonly": lambda: (ro / "data.txt").read_text(),
            "list_readonly": lambda: os.listdir(ro),
            "create_in_readonly": lambda: (ro / "new.txt").write_text("x"),
            "open_readonly_for_write": lambda: open(ro / "data.txt", "r+").close(),
            "truncate_readonly": lambda: os.truncate(ro / "data.txt", 0),
            "write_writable": lambda: (rw / "out.txt").write_text("x"),
            "mkdir_writable": lambda: (rw / "sub").mkdir(),
            "rename_writable": lambda: (rw / "out.txt").rename(rw / "sub" / "moved.txt"),
            "unlink_writable": lambda: [
                (rw / "gone.txt").write_text("x"),
                (rw / "gone.txt").unlink(),
            ],
            "dev_null": lambda: open("/dev/null", "r+b").close(),
            "dev_zero": lambda: open("/dev/zero", "rb").close(),
            "import_stdlib": lambda: importlib.import_module(module),
            "tcp_connect": lambda: socket.create_connection(("127.0.0.1", port), timeout=5).close(),
            "tcp_bind": bind_tcp,
            "abstract_unix_connect": connect_abstract,
            "signal_parent": lambda: os.kill(parent, 0),
            "signal_self": lambda: os.kill(os.getpid(), 0),
            "grandchild": grandchild_reads_hidden,
        }
        for name, action in checks.items():
            out[name] = attempt(action)
        return out

    try:
        out = in_child(probe)
    finally:
        listener.close()
        abstract.close()

    assert out.pop("result") == {"abi": abi, "net": abi >= 4, "scoped": abi >= 6}
    denied = "PermissionError:EACCES"
    expected = {
        "read_hidden": denied,
        "list_hidden": denied,
        "read_file_rule": "ok",
        "read_readonly": "ok",
        "list_readonly": "ok",
        "create_in_readonly": denied,
        "open_readonly_for_write": denied,
        "write_writable": "ok",
        "mkdir_writable": "ok",
        # ABI 2 handles REFER; before it, moving a file between directories is always refused.
        "rename_writable": "ok" if abi >= 2 else "OSError:EXDEV",
        "unlink_writable": "ok",
        "dev_null": "ok",
        "dev_zero": denied,
        "import_stdlib": "ok",
        "signal_self": "ok",
        "grandchild": "ok",
        # ABI 3 handles truncate; before it a read-only file could still be emptied.
        "truncate_readonly": denied if abi >= 3 else "ok",
        # ABI 4: no rule grants any TCP port, so every bind and connect fails.
        "tcp_connect": denied if abi >= 4 else "ok",
        "tcp_bind": denied if abi >= 4 else "ok",
        # ABI 6: scoped abstract unix sockets and signals stop at the sandbox's edge.
        "abstract_unix_connect": "PermissionError:EPERM" if abi >= 6 else "ok",
        "signal_parent": "PermissionError:EPERM" if abi >= 6 else "ok",
    }
    assert out == expected
    if abi >= 3:
        assert (dirs["readonly"] / "data.txt").read_text() == "data"


@pytest.mark.sandbox
@LINUX_ONLY
def test_landlock_refuses_to_pretend(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Landlock, restrict raises instead of returning as if the process were confined."""

    def probe() -> dict[str, Any]:
        monkeypatch.setattr(landlock, "abi_version", lambda: 0)
        try:
            landlock.restrict(readonly=["/usr"], writable=["/tmp"])
        except OSError as exc:
            return {"errno": exc.errno, "text": str(exc), "after": attempt(lambda: os.listdir("/"))}
        return {"errno": None}

    out = in_child(probe)
    assert out["errno"] and "Landlock is not available" in out["text"]
    assert out["after"] == "ok"  # nothing was restricted on the way to the error


# --- seccomp ----------------------------------------------------------------------------------


def run_bpf(prog: list[seccomp.Instruction], nr: int, arch: int, arg0: int = 0) -> int:
    """Evaluate the filter on one syscall, as the kernel would: a tiny classic-BPF interpreter
    for the few opcodes the filter uses. Checks jump targets, so a bad offset cannot hide."""
    data = struct.pack("<IIQ6Q", nr, arch, 0, arg0, 0, 0, 0, 0, 0)
    pc, acc = 0, 0
    while True:
        assert 0 <= pc < len(prog), f"jump out of the program at {pc}"
        code, jt, jf, k = prog[pc]
        assert 0 <= jt <= 255 and 0 <= jf <= 255
        if code == seccomp.BPF_LD_W_ABS:
            (acc,) = struct.unpack_from("<I", data, k)
            pc += 1
        elif code == seccomp.BPF_JEQ_K:
            pc += 1 + (jt if acc == k else jf)
        elif code == seccomp.BPF_JGE_K:
            pc += 1 + (jt if acc >= k else jf)
        elif code == seccomp.BPF_JSET_K:
            pc += 1 + (jt if acc & k else jf)
        elif code == seccomp.BPF_RET_K:
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


@pytest.mark.parametrize("arch", sorted(seccomp.TABLES))
def test_seccomp_program_decides_every_syscall(arch: str) -> None:
    """Both architectures' programs, evaluated offline (aarch64 cannot run live on CI)."""
    prog = seccomp.build_program(arch)
    table, audit = seccomp.TABLES[arch], seccomp.AUDIT_ARCH[arch]
    eperm, allow = seccomp.RET_EPERM, seccomp.SECCOMP_RET_ALLOW
    assert len(prog) < 4096  # BPF_MAXINSNS

    # Another ABI's numbering (i386 through int 0x80, the other 64-bit table): killed.
    for other in {0x40000003, *seccomp.AUDIT_ARCH.values()} - {audit}:
        assert run_bpf(prog, table["socket"], other, 1) == seccomp.SECCOMP_RET_KILL_PROCESS
    denied = {table[name] for name in seccomp.DENIED if name in table}
    assert len(denied) >= 45
    special = {table["socket"], table["clone"], table["clone3"]}
    for nr in range(600):
        expected = eperm if nr in denied else allow
        if nr not in special:
            assert run_bpf(prog, nr, audit) == expected, nr
    assert run_bpf(prog, table["clone3"], audit) == seccomp.SECCOMP_RET_ERRNO | errno.ENOSYS

    for domain, verdict in [(1, allow), (2, eperm), (10, eperm), (16, eperm), (17, eperm)]:
        assert run_bpf(prog, table["socket"], audit, domain) == verdict, domain
    # Only the low 32 bits count (the kernel reads an int): high garbage does not matter.
    assert run_bpf(prog, table["socket"], audit, (1 << 32) | 1) == allow

    fork_flags, thread_flags = SIGCHLD, 0x3D0F00  # glibc's fork() and pthread_create() flags
    assert run_bpf(prog, table["clone"], audit, fork_flags) == allow
    assert run_bpf(prog, table["clone"], audit, thread_flags) == allow
    for bit in range(32):
        flag = 1 << bit
        verdict = eperm if flag & seccomp.CLONE_NAMESPACE_FLAGS else allow
        assert run_bpf(prog, table["clone"], audit, flag | SIGCHLD) == verdict, hex(flag)

    if arch == "x86_64":
        for nr in (0, 39, 41, 512, 547):  # x32: read, getpid, socket, x32-only numbers
            assert run_bpf(prog, nr | seccomp.X32_SYSCALL_BIT, audit) == eperm


HEADERS = {
    "x86_64": "/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
    "aarch64": "/usr/include/asm-generic/unistd.h",
}


@pytest.mark.parametrize("arch", sorted(seccomp.TABLES))
def test_seccomp_tables_match_kernel_headers(arch: str) -> None:
    """The module carries its own numbers; where linux-libc-dev is installed, check them."""
    header = Path(HEADERS[arch])
    if not header.exists():
        pytest.skip(f"{header} is not installed (linux-libc-dev)")
    numbers = {
        m[1]: int(m[2]) for m in re.finditer(r"#define __NR_(\w+)\s+(\d+)", header.read_text())
    }
    assert {name: numbers.get(name) for name in seccomp.TABLES[arch]} == seccomp.TABLES[arch]


def test_seccomp_struct_layouts() -> None:
    assert ctypes.sizeof(seccomp.SockFilter) == 8


@pytest.mark.sandbox
@LINUX_ONLY
def test_seccomp_refuses_unknown_architecture(monkeypatch: pytest.MonkeyPatch) -> None:
    def probe() -> dict[str, Any]:
        monkeypatch.setattr(platform, "machine", lambda: "riscv64")
        try:
            seccomp.install()
        except OSError as exc:
            return {"supported": seccomp.supported(), "errno": exc.errno, "text": str(exc)}
        return {"supported": seccomp.supported(), "errno": None}

    out = in_child(probe)
    assert out["supported"] is False
    assert out["errno"] == errno.ENOSYS and "riscv64" in out["text"]


@pytest.mark.sandbox
@LINUX_ONLY
@pytest.mark.skipif(not seccomp.supported(), reason=f"no syscall table for {platform.machine()}")
def test_seccomp_denies_and_allows() -> None:
    table = seccomp.TABLES[platform.machine()]
    have_torch = importlib.util.find_spec("torch") is not None

    def probe() -> dict[str, Any]:
        # A thread that exists before install must come under the filter too (TSYNC).
        go, early = threading.Event(), {}

        def early_thread() -> None:
            go.wait()
            early["inet"] = attempt(lambda: socket.socket(socket.AF_INET).close())

        before = threading.Thread(target=early_thread)
        before.start()
        seccomp.install()
        go.set()
        before.join()
        out: dict[str, Any] = {"early_thread_inet": early["inet"]}

        def socketpair() -> None:
            a, b = socket.socketpair()
            with a, b:
                a.sendall(b"ping")
                assert b.recv(4) == b"ping"

        def fork() -> None:
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0

        def thread() -> None:
            ids: list[int] = []
            t = threading.Thread(target=lambda: ids.append(threading.get_native_id()))
            t.start()
            t.join()
            assert ids and ids[0] != threading.get_native_id()

        def syscall(name: str, *args: int) -> int:
            return LIBC.syscall(ctypes.c_long(table[name]), *(ctypes.c_long(a) for a in args))

        def clone_into_new_userns() -> str:
            # Raw clone behaves like fork when it works; the child must leave at once.
            rc = syscall("clone", CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)
            if rc == 0:
                os._exit(0)
            if rc > 0:
                os.waitpid(rc, 0)
                return "created"
            return raw(rc)

        checks: dict[str, Callable[[], object]] = {
            "inet": lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close(),
            "inet_udp": lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close(),
            "inet6": lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close(),
            "netlink": lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close(),
            "unix": lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close(),
            "socketpair": socketpair,
            "fork": fork,
            "thread": thread,
        }
        for name, action in checks.items():
            out[name] = attempt(action)
        out["unshare_user"] = raw(LIBC.unshare(CLONE_NEWUSER))
        out["unshare_net"] = raw(LIBC.unshare(CLONE_NEWNET))
        out["clone_newuser"] = clone_into_new_userns()
        out["clone3"] = raw(syscall("clone3", 0, 0))
        # keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0) works for anyone unfiltered.
        out["keyctl"] = raw(syscall("keyctl", 0, -3, 0))
        # io_uring_setup(1, NULL) would be EFAULT unfiltered.
        out["io_uring_setup"] = raw(syscall("io_uring_setup", 1, 0))
        if platform.machine() == "x86_64":
            out["x32_getpid"] = raw(LIBC.syscall(ctypes.c_long(39 | seccomp.X32_SYSCALL_BIT)))
        out["getpid"] = "ok" if LIBC.getpid() == os.getpid() else "wrong"
        if have_torch:
            import torch

            out["torch"] = float(torch.ones(3).sum())
        # Last: unfiltered, TRACEME would make pytest this child's tracer.
        out["ptrace_traceme"] = raw(LIBC.ptrace(ctypes.c_long(0), 0, None, None))
        return out

    out = in_child(probe)
    eperm = "PermissionError:EPERM"
    expected: dict[str, Any] = {
        "early_thread_inet": eperm,
        "inet": eperm,
        "inet_udp": eperm,
        "inet6": eperm,
        "netlink": eperm,
        "unix": "ok",
        "socketpair": "ok",
        "fork": "ok",
        "thread": "ok",
        "unshare_user": "EPERM",
        "unshare_net": "EPERM",
        "clone_newuser": "EPERM",
        "clone3": "ENOSYS",
        "keyctl": "EPERM",
        "io_uring_setup": "EPERM",
        "getpid": "ok",
        "ptrace_traceme": "EPERM",
    }
    if platform.machine() == "x86_64":
        expected["x32_getpid"] = "EPERM"
    if have_torch:
        expected["torch"] = 3.0
    assert out == expected
