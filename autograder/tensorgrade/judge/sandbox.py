"""The judge's handle on one sandbox, and on the zygote that starts it.

The judge never decides how a sandbox is confined: it asks the zygote (``root.zygote``) for one,
by slot and limits, and reads back what held (``protocol.Isolation``) from the sandbox's first
message, sent before any student code ran.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import protocol, settings, wire
from ..config import Limits
from . import gpus

# The zygote's whole environment: nothing else of the grader's (API tokens...) reaches it.
ZYGOTE_ENV_KEYS = (
    "PATH",
    "LANG",
    "TMPDIR",
    "VIRTUAL_ENV",
    "PYTHONPATH",
    "LD_LIBRARY_PATH",  # GPU driver libraries may live outside /usr
    "CUDA_VISIBLE_DEVICES",
    "CUDA_MPS_PIPE_DIRECTORY",
    "CUDA_MPS_LOG_DIRECTORY",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
)
ZYGOTE_ENV_FIXED = {
    "MPLBACKEND": "Agg",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONHASHSEED": "0",
    "NVIDIA_TF32_OVERRIDE": "0",  # what torch reads at import time: the sandbox's settings
}
MAX_DATA_FILES = 64 * 2**20  # bytes of assignment data files sent into one sandbox


def sandbox_threads() -> str:
    """CPU threads per sandbox: one, so that --jobs N uses N cores (override: OMP_NUM_THREADS)."""
    return settings.threads()


def zygote_env() -> dict[str, str]:
    env = {k: os.environ[k] for k in ZYGOTE_ENV_KEYS if k in os.environ}
    env.setdefault("PATH", "/usr/bin:/bin")
    return {**env, **ZYGOTE_ENV_FIXED, "OMP_NUM_THREADS": sandbox_threads()}


class SandboxDied(RuntimeError):
    """The sandbox process ended (crash, os._exit, signal, out of memory) or stopped answering."""


class SandboxTimeout(RuntimeError):
    pass


def sandbox_limits(limits: Limits) -> protocol.SandboxLimits:
    """What the zygote applies to one sandbox, in its units, from an assignment's limits."""
    return protocol.SandboxLimits(
        processes=limits.processes,
        file_bytes=limits.file_mb * 2**20,
        cpu_seconds=int(limits.submission_timeout) + 5,
        open_files=1024,
        # CUDA reserves huge address ranges: no address-space limit on a GPU machine
        memory_bytes=0 if _cuda_present() else limits.memory_mb * 2**20,
        tmpfs_bytes=limits.tmpfs_mb * 2**20,
        stdout_chars=limits.stdout_chars,
    )


@dataclass
class Sandbox:
    slot: int
    limits: Limits
    files_from: Path | None = None
    pid: int | None = None
    uid: int | None = None
    isolation: protocol.Isolation = field(default_factory=protocol.Isolation)
    gpu_released: bool | None = None  # set by close() on a GPU machine (None: not checked)

    def start(self) -> None:
        zyg = Zygote.get()
        if zyg is None:
            raise SandboxDied(f"the sandbox starter could not run: {Zygote.failure}")
        req_r, self.req_w = os.pipe()
        self.resp_r, resp_w = os.pipe()
        self._stderr = tempfile.TemporaryFile()
        try:
            reply = zyg.spawn(
                protocol.Spawn(self.slot, sandbox_limits(self.limits)),
                (req_r, resp_w, self._stderr.fileno()),
            )
        finally:
            os.close(req_r)
            os.close(resp_w)
        if reply.error:
            raise SandboxDied(reply.error)
        self.pid, self.uid = reply.pid, reply.uid
        os.set_blocking(self.req_w, False)  # send() waits with a deadline, never blocks
        try:
            header, _ = self.receive(self.limits.startup_timeout)
        except SandboxDied as e:
            raise SandboxDied(f"{e}: {self.stderr_tail()}") from None
        try:
            ready = protocol.parse_answer(header)
        except protocol.ProtocolError as e:
            raise SandboxDied(f"the sandbox sent a malformed start message: {e}") from None
        if not isinstance(ready, protocol.Ready):
            raise SandboxDied("the sandbox did not start")
        self.isolation = ready.isolation
        self._put_files()

    def _put_files(self) -> None:
        """Send the assignment's data files (never its notebooks) into the sandbox's workdir."""
        if not self.files_from or not self.files_from.is_dir():
            return
        files, total = {}, 0
        for p in sorted(self.files_from.rglob("*")):
            if p.is_file() and not p.is_symlink() and p.suffix != ".ipynb":
                data = p.read_bytes()
                total += len(data)
                if total > MAX_DATA_FILES:
                    raise SandboxDied("the assignment's data files are too large to send")
                rel = p.relative_to(self.files_from).as_posix()
                files[rel] = (
                    torch.frombuffer(bytearray(data), dtype=torch.uint8)
                    if data
                    else (torch.zeros(0, dtype=torch.uint8))
                )
        if files:
            h, _, _ = self.request({"op": "put", "value": files}, self.limits.startup_timeout)
            if not h.get("ok"):
                raise SandboxDied(f"could not copy the data files: {h.get('error', '')}")

    def stderr_tail(self, n: int = 1500) -> str:
        f = getattr(self, "_stderr", None)
        if f is None:
            return ""
        try:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - n))
            return f.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def request(self, header: dict, timeout: float, portable_type=None) -> tuple[dict, bytes, list]:
        """One request and its answer, untyped (set-up and `doctor`; grading uses Session.ask)."""
        until = time.monotonic() + timeout
        data, portables = wire.encode(header, portable_type)
        self.send(data, until)
        h, blob = self.receive(until - time.monotonic())
        return h, blob, portables

    def send(self, data: bytes, until: float) -> None:
        """Write to the sandbox without waiting past ``until``: a sandbox that stops reading
        (its code holds the interpreter) must not stall the judge on a full pipe."""
        view = memoryview(data)
        while view:
            left = until - time.monotonic()
            if left <= 0:
                raise SandboxTimeout("the sandbox stopped reading")
            _, ready, _ = select.select([], [self.req_w], [], left)
            if not ready:
                continue
            try:
                view = view[os.write(self.req_w, view) :]
            except BlockingIOError:
                continue
            except OSError:  # the sandbox closed its end: it is dead
                raise SandboxDied(self._death()) from None

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
        if getattr(self, "_code", None) is None and self.pid:
            zyg = Zygote.get()
            self._code = zyg.status(self.pid, timeout) if zyg is not None else None
        return getattr(self, "_code", None)

    def _death(self) -> str:
        code = self._exit_code(2.0)
        if code is None:
            return "the process stopped answering"
        if code > 128:
            try:
                return f"the process was killed by signal {signal.Signals(code - 128).name}"
            except ValueError:
                pass
        if code == protocol.EXIT_SETUP:
            return "the sandbox could not be set up"
        if code == protocol.EXIT_DISK:
            return f"its files grew past the {self.limits.tmpfs_mb} MiB allowed"
        return f"the process exited with code {code}"

    def close(self) -> None:
        """Kill the sandbox and everything it started, then have its files removed."""
        if self.pid:
            zyg = Zygote.get()
            pids = zyg.reap(self.pid) if zyg is not None else []
            if _cuda_present():
                self.gpu_released = gpus.memory_released({self.pid, *pids})
            self.pid = None
        for fd in (getattr(self, "req_w", None), getattr(self, "resp_r", None)):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.req_w = self.resp_r = None  # type: ignore[assignment]  # closed: unusable after close
        if getattr(self, "_stderr", None) is not None:
            self._stderr.close()
            self._stderr = None  # type: ignore[assignment]


class Zygote:
    """The judge's handle on the fork server (``tensorgrade.root.zygote``), one per process.

    Started once (as root where the grader is root, before a judge user drops privileges) with
    the folders no sandbox may see and whether namespaces may be used; later calls reuse it.
    """

    _instance: Zygote | None = None
    failure = ""
    hidden: list[Path] = []
    namespaces = True
    _lock = threading.Lock()

    def __init__(self) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        cmd = [sys.executable, "-m", "tensorgrade.root.zygote", str(theirs.fileno())]
        cmd += [f"--hide={p}" for p in self.hidden]
        cmd += [] if self.namespaces else ["--no-namespaces"]
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            cmd,
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            cwd="/",
            env=zygote_env(),
        )
        theirs.close()
        self.sock = mine
        self.sock.settimeout(120)
        try:
            hello = json.loads(self.sock.recv(4096) or b"{}")
            ok = hello.get("ready") is True
            self.base = str(hello.get("base", ""))  # its folder of sandbox workdirs (for tests)
        except (OSError, ValueError, AttributeError):
            ok = False
        if not ok:
            self._stderr.seek(0)
            tail = self._stderr.read()[-1500:].decode("utf-8", "replace").strip()
            self.proc.kill()
            raise OSError(f"the zygote did not start: {tail or 'no message'}")

    @classmethod
    def configure(cls, hidden: list[Path], namespaces: bool) -> None:
        """What the next zygote is started with; a running one with other settings is replaced."""
        hidden = sorted(Path(p).resolve() for p in hidden)
        with cls._lock:
            if (hidden, namespaces) != (cls.hidden, cls.namespaces):
                cls.hidden, cls.namespaces = hidden, namespaces
                if cls._instance is not None:
                    cls._instance.stop()
                    cls._instance = None
                cls.failure = ""

    @classmethod
    def get(cls) -> Zygote | None:
        """The running zygote, started on first use; None if it cannot run (``failure`` says why)."""
        with cls._lock:
            if cls._instance is not None and cls._instance.proc.poll() is None:
                return cls._instance
            if cls.failure:
                return None
            try:
                cls._instance = Zygote()
            except (OSError, ValueError) as e:
                cls.failure = str(e)
                return None
            return cls._instance

    def stop(self) -> None:
        self.sock.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def _ask(self, msg, fds: tuple[int, ...] = (), timeout: float = 30) -> bytes:
        with self._lock:
            self.sock.settimeout(timeout)
            socket.send_fds(self.sock, [protocol.encode(msg)], list(fds))
            return self.sock.recv(protocol.MAX_MESSAGE)

    def spawn(self, req: protocol.Spawn, fds: tuple[int, int, int]) -> protocol.Spawned:
        try:
            return protocol.parse_spawned(self._ask(req, fds))
        except (OSError, protocol.ProtocolError) as e:
            return protocol.Spawned(0, 0, f"the sandbox starter failed: {e}")

    def reap(self, pid: int) -> list[int]:
        """Kill a sandbox and its processes and remove its files; the pids it had."""
        try:
            return protocol.parse_reaped(self._ask(protocol.Reap(pid), timeout=90)).pids
        except (OSError, protocol.ProtocolError):
            return []

    def status(self, pid: int, timeout: float) -> int | None:
        try:
            raw = self._ask(protocol.Status(pid, timeout), timeout=timeout + 30)
            return protocol.parse_exited(raw).code
        except (OSError, protocol.ProtocolError):
            return None


def _cuda_present() -> bool:
    # Decided without initialising CUDA in the judge: RLIMIT_AS breaks CUDA's address reservations.
    return any(Path("/dev").glob("nvidia[0-9]*"))
