"""The judge's handle on one sandbox, and on the zygote that starts it.

The judge never decides how a sandbox is confined: it asks the zygote (``root.zygote``) for one,
by slot and limits, and reads back what held (``protocol.Isolation``) from the sandbox's first
message, sent before any student code ran.
"""

from __future__ import annotations

import os
import select
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import protocol, wire
from ..config import Limits
from . import gpus
from .starter import (  # noqa: F401 - the zygote's handle, importable without torch
    ZYGOTE_ENV_FIXED,
    ZYGOTE_ENV_KEYS,
    Zygote,
    sandbox_threads,
    zygote_env,
)

MAX_DATA_FILES = 64 * 2**20  # bytes of assignment data files sent into one sandbox


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
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Have the zygote fork the sandbox; it sets itself up on its own (``wait_ready``)."""
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

    def wait_ready(self) -> None:
        """Wait for the sandbox's first message (what isolation held), then send the data files."""
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
                import torch  # imported already: the judge runs the tests

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


class Spare:
    """One launched, unused sandbox, kept for the next submission of a batch.

    Launched while the judge runs the previous submission's tests, it confines itself and starts
    its shell on another core, so the next submission finds it ready instead of waiting for a
    fresh one (measured: 0.05 s of each submission of a batch on a quiet machine, 0.2 s on a busy
    one). It has run no code but ours: taking it is the same as starting a sandbox then. It is
    used only with the slot, limits and data files it was launched with; anything else closes it.
    """

    _sandbox: Sandbox | None = None

    @classmethod
    def launch(cls, slot: int, limits: Limits, files_from: Path | None) -> None:
        if cls._sandbox is not None:
            return
        sb = Sandbox(slot, limits, files_from)
        try:
            sb.launch()
        except SandboxDied:
            sb.close()  # the next submission starts its own and reports why it can't
            return
        cls._sandbox = sb

    @classmethod
    def take(cls, slot: int, limits: Limits, files_from: Path | None) -> Sandbox | None:
        sb, cls._sandbox = cls._sandbox, None
        if sb is None:
            return None
        same_files = sb.files_from == files_from
        if sb.slot == slot and sandbox_limits(sb.limits) == sandbox_limits(limits) and same_files:
            sb.limits = limits  # the startup wait of the submission taking it
            return sb
        sb.close()
        return None

    @classmethod
    def discard(cls) -> None:
        sb, cls._sandbox = cls._sandbox, None
        if sb is not None:
            sb.close()


def _cuda_present() -> bool:
    # Decided without initialising CUDA in the judge: RLIMIT_AS breaks CUDA's address reservations.
    return any(Path("/dev").glob("nvidia[0-9]*"))
