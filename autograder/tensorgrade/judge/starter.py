"""The judge's handle on the zygote, the fork server that starts every sandbox.

Kept apart from ``sandbox.py`` so that it imports without torch: a grader can start the zygote
first and import torch while the zygote imports its own (``Zygote.prestart``), which saves about
a second on every cold start (one submission alone, as on Gradescope or in a Slurm task).
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from .. import protocol, settings

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


def sandbox_threads() -> str:
    """CPU threads per sandbox: one, so that --jobs N uses N cores (override: OMP_NUM_THREADS)."""
    return settings.threads()


def zygote_env() -> dict[str, str]:
    env = {k: os.environ[k] for k in ZYGOTE_ENV_KEYS if k in os.environ}
    env.setdefault("PATH", "/usr/bin:/bin")
    return {**env, **ZYGOTE_ENV_FIXED, "OMP_NUM_THREADS": sandbox_threads()}


class Zygote:
    """The judge's handle on the fork server (``tensorgrade.root.zygote``), one per process.

    Started once (as root where the grader is root, before a judge user drops privileges) with
    the folders no sandbox may see and whether namespaces may be used; later calls reuse it.
    """

    _instance: Zygote | None = None
    failure = ""
    hidden: list[Path] = []
    namespaces = True
    preload: list[str] = []  # modules it imports before forking (``judge.warm``)
    _lock = threading.Lock()

    def __init__(self) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        cmd = [sys.executable, "-m", "tensorgrade.root.zygote", str(theirs.fileno())]
        cmd += [f"--hide={p}" for p in self.hidden]
        cmd += [] if self.namespaces else ["--no-namespaces"]
        cmd += [f"--preload={m}" for m in self.preload]
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
        self.ready = False
        atexit.register(self.stop)  # ends it cleanly (its sandboxes reaped, its folder removed)

    def _handshake(self) -> None:
        """Wait for the zygote's first message: it has imported torch and can start sandboxes."""
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
        self.ready = True

    @classmethod
    def configure(
        cls, hidden: list[Path], namespaces: bool, preload: list[str] | None = None
    ) -> None:
        """What the next zygote is started with; a running one with other settings is replaced.
        ``preload``: what it imports before forking (None: as before; a running one with fewer
        modules is kept, its sandboxes import the rest themselves)."""
        hidden = sorted(Path(p).resolve() for p in hidden)
        preload = cls.preload if preload is None else sorted(set(preload))
        with cls._lock:
            if (hidden, namespaces) != (cls.hidden, cls.namespaces):
                cls.hidden, cls.namespaces, cls.preload = hidden, namespaces, preload
                if cls._instance is not None:
                    cls._instance.stop()
                    cls._instance = None
                cls.failure = ""
            elif cls._instance is None:
                cls.preload = preload

    @classmethod
    def get(cls) -> Zygote | None:
        """The running zygote, started on first use; None if it cannot run (``failure`` says why)."""
        with cls._lock:
            zyg = cls._instance
            if zyg is not None and not zyg.ready:  # started by prestart: wait for it now
                try:
                    zyg._handshake()
                except OSError as e:
                    cls._instance, cls.failure = None, str(e)
                    return None
            if zyg is not None and zyg.proc.poll() is None:
                return zyg
            if cls.failure:
                return None
            try:
                cls._instance = Zygote()
                cls._instance._handshake()
            except (OSError, ValueError) as e:
                cls._instance, cls.failure = None, str(e)
                return None
            return cls._instance

    @classmethod
    def prestart(cls, hidden: list[Path], namespaces: bool, preload: Sequence[str] = ()) -> None:
        """Start the zygote without waiting for it, so that it imports torch while this process
        imports its own; the first ``get()`` waits for it. Nothing happens if one is running with
        these settings or if it cannot start (``get()`` then says why)."""
        cls.configure(hidden, namespaces, list(preload))
        with cls._lock:
            if cls._instance is None and not cls.failure:
                try:
                    cls._instance = Zygote()
                except OSError as e:
                    cls.failure = str(e)

    def stop(self) -> None:
        """Close the socket: the zygote reaps its sandboxes, removes its folder and exits."""
        atexit.unregister(self.stop)
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
