"""Starting, talking to and killing one sandbox process (judge side)."""

from __future__ import annotations

import fcntl
import functools
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import wire
from ..sandbox.confine import unshare_namespaces
from ..sandbox.procs import BASE_UID, reap_uid, uid_processes  # noqa: F401  (tests use them)
from . import gpus

# Environment every sandbox gets (plus PATH, HOME, TMPDIR); nothing else of the judge's leaks in.
SANDBOX_ENV_FIXED = {
    "LANG": "C.UTF-8",
    "MPLBACKEND": "Agg",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONHASHSEED": "0",
    "NVIDIA_TF32_OVERRIDE": "0",  # full fp32 on Ampere/Hopper: scores must not depend on the GPU
}


def sandbox_threads() -> str:
    """CPU threads per sandbox: one, so that --jobs N uses N cores (override: OMP_NUM_THREADS)."""
    return os.environ.get("OMP_NUM_THREADS", "1")


class SandboxDied(RuntimeError):
    """The sandbox process ended (crash, os._exit, signal, out of memory) or stopped answering."""


class SandboxTimeout(RuntimeError):
    pass


@dataclass
class Limits:
    """Per-assignment limits (``solutions/<id>/grading.yml`` overrides the defaults)."""

    cell_timeout: float = 60.0
    call_timeout: float = 30.0
    submission_timeout: float = 600.0
    startup_timeout: float = 60.0
    memory_mb: int = 6144
    processes: int = 512
    file_mb: int = 64
    stdout_chars: int = 20000
    max_restarts: int = 8  # crashes during the tests after which the remaining tests are not run

    @classmethod
    def from_dict(cls, d: dict) -> Limits:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        unknown = set(d) - set(known)
        if unknown:
            raise ValueError(f"unknown grading limits: {', '.join(sorted(unknown))}")
        return cls(**known)


@functools.cache
def can_confine() -> bool:
    """Full isolation needs root and namespaces (some containers forbid them): probe once."""
    if os.geteuid() != 0:
        return False
    pid = os.fork()
    if pid == 0:  # the child only tries to unshare and exits
        try:
            unshare_namespaces()
            os._exit(0)
        except BaseException:  # noqa: BLE001
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def _enter_namespaces() -> None:  # runs in the child between fork and exec
    os.setsid()
    try:
        unshare_namespaces()
    except OSError:
        os._exit(97)


@dataclass
class Sandbox:
    slot: int
    limits: Limits
    files_from: Path | None = None
    forbidden: list[Path] = field(default_factory=list)  # never visible inside (masters, dist)
    confine: bool = field(default_factory=lambda: can_confine())
    # without namespaces, still run as the slot's own uid where the judge can (it is root)
    own_uid: bool = False
    proc: subprocess.Popen | None = None
    pid: int | None = None
    isolation: dict = field(default_factory=dict)
    gpu_released: bool | None = None  # set by close() on a GPU machine (None: not checked)

    @property
    def switches_uid(self) -> bool:
        """Whether the student's code runs as the slot's uid (not the judge's)."""
        return self.confine or (self.own_uid and os.geteuid() == 0)

    def start(self) -> None:
        self.uid, self._lock = acquire_uid(self.slot)
        self.base = Path(tempfile.mkdtemp(prefix="tg-sandbox-"))
        os.chmod(self.base, 0o711)
        self.workdir = self.base / "work"
        self.stderr_path = self.base / "stderr.txt"  # read only to explain a failed start
        (self.base / "root").mkdir()
        if self.files_from and self.files_from.is_dir():
            shutil.copytree(self.files_from, self.workdir, ignore=shutil.ignore_patterns("*.ipynb"))
        else:
            self.workdir.mkdir()
        (self.workdir / "tmp").mkdir(exist_ok=True)
        req_r, self.req_w = os.pipe()
        self.resp_r, resp_w = os.pipe()
        cfg = {
            "req_fd": req_r,
            "resp_fd": resp_w,
            "workdir": str(self.workdir),
            "judge_uid": os.getuid(),
            "confine": self.confine,
            "own_uid": self.switches_uid,
            "uid": self.uid,
            "gid": self.uid,
            "newroot": str(self.base / "root"),
            "readonly": visible_paths(self.forbidden),
            "stdout_cap": self.limits.stdout_chars,
            "limits": {
                "processes": self.limits.processes,
                "file_bytes": self.limits.file_mb * 2**20,
                "cpu_seconds": int(self.limits.submission_timeout) + 5,
                "open_files": 1024,
                "memory_bytes": self.limits.memory_mb * 2**20 if not _cuda_present() else None,
            },
        }
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.workdir),
            "TMPDIR": str(self.workdir / "tmp"),
            "USER": "student",
            "LOGNAME": "student",
            **SANDBOX_ENV_FIXED,
            "OMP_NUM_THREADS": sandbox_threads(),
        }
        for k in (
            "CUDA_VISIBLE_DEVICES",
            "OPENBLAS_CORETYPE",
            "OPENBLAS_L2_SIZE",
            "VIRTUAL_ENV",
            "PYTHONPATH",
            "LD_LIBRARY_PATH",  # GPU driver libraries may live outside /usr
            "CUDA_MPS_PIPE_DIRECTORY",
            "CUDA_MPS_LOG_DIRECTORY",
        ):
            if k in os.environ:
                env[k] = os.environ[k]
        zyg = Zygote.get()
        if zyg is not None:
            cfg.update(env=env, forked=True, stderr_path=str(self.stderr_path))
            self.pid = zyg.spawn(cfg, (req_r, resp_w))
        else:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tensorgrade.sandbox.worker", json.dumps(cfg)],
                pass_fds=(req_r, resp_w),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=open(self.stderr_path, "wb"),
                env=env,
                cwd="/",
                preexec_fn=_enter_namespaces if self.confine else os.setsid,
            )
            self.pid = self.proc.pid
        os.close(req_r)
        os.close(resp_w)
        try:
            header, _ = self.receive(self.limits.startup_timeout)
        except SandboxDied as e:
            raise SandboxDied(f"{e}: {self.stderr_tail()}") from None
        if header.get("op") != "ready":
            raise SandboxDied("the sandbox did not start")
        self.isolation = header.get("isolation", {})

    def stderr_tail(self, n: int = 1500) -> str:
        try:
            with open(self.stderr_path, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - n))
                return f.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def request(self, header: dict, timeout: float, portable_type=None) -> tuple[dict, bytes, list]:
        data, portables = wire.encode(header, portable_type)
        try:
            wire.write_all(self.req_w, data)
        except (BrokenPipeError, OSError):
            raise SandboxDied(self._death()) from None
        h, blob = self.receive(timeout)
        return h, blob, portables

    def receive(self, timeout: float) -> tuple[dict, bytes]:
        deadline = time.monotonic() + timeout

        def read(n: int) -> bytes:
            chunks, got = [], 0
            while got < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SandboxTimeout(f"no answer within {timeout:.0f} s")
                ready, _, _ = select.select([self.resp_r], [], [], left)
                if not ready:
                    continue
                b = os.read(self.resp_r, min(n - got, 1 << 20))
                if not b:
                    raise SandboxDied(self._death())
                chunks.append(b)
                got += len(b)
            return b"".join(chunks)

        try:
            return wire.split_frame(read)
        except wire.WireError:
            raise
        except ValueError:  # bad JSON
            raise wire.WireError("the sandbox sent a malformed message") from None

    def _exit_code(self, timeout: float) -> int | None:
        if getattr(self, "_code", None) is not None:
            return self._code
        self._code = self._wait_exit(timeout)
        return self._code

    def _wait_exit(self, timeout: float) -> int | None:
        if self.proc is not None:
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return None
        zyg = Zygote.get()
        return zyg.status(self.pid, timeout) if zyg is not None and self.pid else None

    def _death(self) -> str:
        code = self._exit_code(2.0)
        if code is None:
            return "the process stopped answering"
        if code < 0:
            return f"the process was killed by signal {signal.Signals(-code).name}"
        if code == 97:
            return "the sandbox could not enter its namespaces"
        return f"the process exited with code {code}"

    def _kill(self) -> None:
        if self.pid:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self._exit_code(5.0)
        if self.switches_uid and hasattr(self, "uid"):
            reap_uid(self.uid)

    def close(self) -> None:
        """Kill the sandbox and everything its uid left running, then remove its files."""
        on_gpu = _cuda_present()
        holders = {self.pid} if self.pid else set()
        if on_gpu and self.switches_uid and self.pid and hasattr(self, "uid"):
            holders |= set(uid_processes(self.uid))
        if self.pid and self.proc is None and os.geteuid() != 0:
            # an unprivileged judge may not kill the sandbox uid: the zygote (root) does it
            Zygote.get().reap(
                self.pid, getattr(self, "uid", None) if self.switches_uid else None, str(self.base)
            )
        else:
            self._kill()
        self.pid = None
        if on_gpu and holders:
            self.gpu_released = gpus.memory_released(holders)
        for fd in (getattr(self, "req_w", None), getattr(self, "resp_r", None)):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        if hasattr(self, "base"):
            shutil.rmtree(self.base, ignore_errors=True)
        if getattr(self, "_lock", None) is not None:
            self._lock.close()  # releases the uid for the next sandbox
            self._lock = None


class Zygote:
    """The judge's handle on the fork server (``tensorgrade.sandbox.zygote``), one per process."""

    _instance: Zygote | None = None
    _failed = False
    _lock = threading.Lock()

    def __init__(self) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tensorgrade.sandbox.zygote", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
            # what torch reads at import time must already be the sandbox's settings
            env={**os.environ, **SANDBOX_ENV_FIXED, "OMP_NUM_THREADS": sandbox_threads()},
        )
        theirs.close()
        self.sock = mine
        self.sock.settimeout(120)
        if json.loads(self.sock.recv(4096)).get("ready") is not True:
            raise OSError("zygote did not start")
        self.sock.settimeout(30)

    @classmethod
    def get(cls) -> Zygote | None:
        """The running zygote, started on first use; None (spawn directly) if it cannot run."""
        if os.environ.get("TENSORGRADE_NO_ZYGOTE"):
            return None
        with cls._lock:
            if cls._instance is not None and cls._instance.proc.poll() is None:
                return cls._instance
            if cls._failed:
                return None
            try:
                cls._instance = Zygote()
            except (OSError, ValueError):
                cls._failed = True
                return None
            return cls._instance

    def _ask(self, msg: dict, fds: tuple[int, ...] = (), timeout: float = 30) -> dict:
        with self._lock:
            self.sock.settimeout(timeout)
            socket.send_fds(self.sock, [json.dumps(msg).encode()], list(fds))
            return json.loads(self.sock.recv(1 << 16))

    def spawn(self, cfg: dict, fds: tuple[int, int]) -> int:
        return int(self._ask({"op": "spawn", "cfg": cfg}, fds)["pid"])

    def reap(self, pid: int | None, uid: int | None, base: str) -> None:
        """Kill a sandbox and its uid's processes and remove its files (for an unprivileged judge)."""
        try:
            self._ask({"op": "reap", "pid": pid, "uid": uid, "base": base}, timeout=60)
        except (OSError, ValueError):
            pass

    def status(self, pid: int, timeout: float) -> int | None:
        try:
            return self._ask({"op": "status", "pid": pid, "timeout": timeout}).get("code")
        except (OSError, ValueError):
            return None


MAX_SLOTS = 4096


def uid_lock_dir() -> Path:
    """Where sandbox uids are locked; shared by graders running as root and as a judge user."""
    lock_dir = Path(tempfile.gettempdir()) / "tensorgrade-uids"
    lock_dir.mkdir(exist_ok=True)
    if lock_dir.stat().st_uid == os.geteuid():
        os.chmod(lock_dir, 0o1777)
    return lock_dir


def acquire_uid(preferred: int) -> tuple[int, object]:
    """Lock a sandbox uid for this process, machine-wide (several graders may run at once).

    Cleaning up kills every process of the uid, so two live sandboxes must never share one.
    """
    lock_dir = uid_lock_dir()
    for k in [preferred, *range(MAX_SLOTS)]:
        try:
            fd = os.open(lock_dir / f"{k}.lock", os.O_RDWR | os.O_CREAT, 0o666)
            if os.fstat(fd).st_uid == os.geteuid():
                os.fchmod(fd, 0o666)
        except OSError:
            continue
        f = os.fdopen(fd, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        return BASE_UID + k, f
    raise SandboxDied("no free sandbox uid")


def visible_paths(forbidden: list[Path] = ()) -> list[str]:
    """What the sandbox sees besides the system dirs: the interpreter, its site dirs, PYTHONPATH
    entries and the tensorgrade package — never a directory that holds a ``forbidden`` one."""
    import tensorgrade

    paths = {sys.prefix, sys.base_prefix, str(Path(tensorgrade.__file__).parent)}
    paths |= {p for p in sys.path if p and Path(p).name in ("site-packages", "dist-packages")}
    for var in ("PYTHONPATH", "LD_LIBRARY_PATH"):
        paths |= {p for p in os.environ.get(var, "").split(os.pathsep) if p}
    # GPU helpers a CUDA client may need to reach: the MPS pipe and the persistence daemon
    paths |= {os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps")}
    paths |= {"/run/nvidia-persistenced", "/var/run/nvidia-persistenced"}
    out = []
    for p in sorted(paths):
        rp = Path(p).resolve()
        if not _is_dir(rp) or any(str(rp).startswith(d + "/") for d in ("/usr", "/etc")):
            continue
        if any(rp == f.resolve() or rp in f.resolve().parents for f in forbidden):
            continue
        out.append(str(rp))
    return out


def others_can_use(paths: list[str]) -> bool:
    """Whether a uid with no rights of its own can reach and read every path: without a private
    root, the sandbox sees the machine's folders with their own permissions (an interpreter under
    a 0700 /root would not even import)."""
    for p in map(Path, paths):
        try:
            if any(not d.stat().st_mode & 0o001 for d in p.parents):
                return False
            if p.stat().st_mode & 0o005 != 0o005:
                return False
        except OSError:
            return False
    return True


def _is_dir(p: Path) -> bool:
    try:
        return p.is_dir()
    except PermissionError:  # a judge user may not look inside; the sandbox mounts it as root
        return True


def _cuda_present() -> bool:
    # Decided without initialising CUDA in the judge: RLIMIT_AS breaks CUDA's address reservations.
    return any(Path("/dev").glob("nvidia[0-9]*"))
