"""Every message that crosses a process boundary, typed and validated on receipt.

Two boundaries: judge <-> zygote (the root helper, over a Unix socket) and judge <-> sandbox (over
pipes, framed by ``wire``). A message that does not parse into one of these dataclasses is refused
whole; nothing is taken from it. Privilege decisions (which uid, which layers) are never fields of
a request: the zygote derives them itself.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

LAYERS = ("uid", "net", "mount", "pid", "ipc", "landlock", "seccomp")
MAX_MESSAGE = 1 << 16  # bytes of one zygote message
EXIT_SETUP = 97  # a sandbox's exit code: it could not confine itself (its stderr says why)
EXIT_DISK = 125  # a sandbox's exit code: its on-disk workdir grew past its allowance


class ProtocolError(ValueError):
    """A message that is not one of ours: wrong type, unknown field, value out of bounds."""


def _int(d: dict, key: str, lo: int, hi: int) -> int:
    v = d.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ProtocolError(f"{key} must be an integer in [{lo}, {hi}], not {v!r}")
    return v


def _only(d: Any, allowed: set[str], what: str) -> dict:
    if not isinstance(d, dict):
        raise ProtocolError(f"{what} must be an object")
    extra = set(d) - allowed
    if extra:
        raise ProtocolError(f"{what}: unknown field(s) {', '.join(sorted(map(str, extra)))}")
    return d


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandbox. 0 means "no limit" for memory (CUDA needs address space)."""

    processes: int
    file_bytes: int
    cpu_seconds: int
    open_files: int
    memory_bytes: int
    tmpfs_bytes: int  # total of workdir, /tmp and /dev/shm where the sandbox has a private root
    stdout_chars: int  # what the student's cells print, kept per cell

    @classmethod
    def parse(cls, d: Any) -> SandboxLimits:
        d = _only(d, {f.name for f in fields(cls)}, "limits")
        return cls(
            processes=_int(d, "processes", 8, 1 << 16),
            file_bytes=_int(d, "file_bytes", 1 << 16, 1 << 40),
            cpu_seconds=_int(d, "cpu_seconds", 1, 1 << 20),
            open_files=_int(d, "open_files", 64, 1 << 16),
            memory_bytes=_int(d, "memory_bytes", 0, 1 << 46),
            tmpfs_bytes=_int(d, "tmpfs_bytes", 1 << 20, 1 << 40),
            stdout_chars=_int(d, "stdout_chars", 0, 1 << 24),
        )


# ---- judge <-> zygote -------------------------------------------------------------------------


@dataclass(frozen=True)
class Spawn:
    """Start one sandbox. Passed with three file descriptors: requests in, answers out, stderr."""

    slot: int
    limits: SandboxLimits
    op: str = "spawn"


@dataclass(frozen=True)
class Reap:
    """Kill one sandbox (every process it started) and remove whatever it left on disk."""

    pid: int
    op: str = "reap"


@dataclass(frozen=True)
class Status:
    """The exit code of a sandbox, waiting at most ``timeout`` seconds."""

    pid: int
    timeout: float
    op: str = "status"


ZygoteRequest = Spawn | Reap | Status


def encode(msg: Any) -> bytes:
    return json.dumps(asdict(msg)).encode()


def parse_zygote_request(raw: bytes) -> ZygoteRequest:
    """What the zygote accepts; anything else raises ProtocolError."""
    d = _load(raw)
    op = d.get("op")
    if op == "spawn":
        _only(d, {"op", "slot", "limits"}, "spawn")
        return Spawn(_int(d, "slot", 0, 4095), SandboxLimits.parse(d.get("limits")))
    if op == "reap":
        _only(d, {"op", "pid"}, "reap")
        return Reap(_int(d, "pid", 2, 1 << 22))
    if op == "status":
        _only(d, {"op", "pid", "timeout"}, "status")
        t = d.get("timeout")
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0 <= t <= 600:
            raise ProtocolError("timeout must be a number of seconds in [0, 600]")
        return Status(_int(d, "pid", 2, 1 << 22), float(t))
    raise ProtocolError(f"unknown request {op!r}")


@dataclass(frozen=True)
class Spawned:
    pid: int
    uid: int  # the sandbox's uid (the zygote's own when it could not switch)
    error: str = ""  # set when no sandbox was started


@dataclass(frozen=True)
class Reaped:
    pids: list[int]  # the processes the sandbox had when it was killed (for the GPU check)


@dataclass(frozen=True)
class Exited:
    code: int | None  # None: still running after the timeout


def parse_spawned(raw: bytes) -> Spawned:
    d = _only(_load(raw), {"pid", "uid", "error"}, "spawned")
    err = d.get("error", "")
    if not isinstance(err, str):
        raise ProtocolError("error must be text")
    if err:
        return Spawned(0, 0, err[:2000])
    return Spawned(_int(d, "pid", 2, 1 << 22), _int(d, "uid", 0, (1 << 32) - 2))


def parse_reaped(raw: bytes) -> Reaped:
    d = _only(_load(raw), {"pids"}, "reaped")
    pids = d.get("pids")
    if not isinstance(pids, list) or not all(
        isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in pids
    ):
        raise ProtocolError("pids must be a list of process ids")
    return Reaped(pids[:4096])


def parse_exited(raw: bytes) -> Exited:
    d = _only(_load(raw), {"code"}, "exited")
    code = d.get("code")
    if code is not None and (not isinstance(code, int) or isinstance(code, bool)):
        raise ProtocolError("code must be an integer or null")
    return Exited(code)


def _load(raw: bytes) -> dict:
    if len(raw) > MAX_MESSAGE:
        raise ProtocolError("message too large")
    try:
        d = json.loads(raw)
    except (ValueError, RecursionError):
        raise ProtocolError("not JSON") from None
    if not isinstance(d, dict):
        raise ProtocolError("a message is a JSON object")
    return d


# ---- sandbox -> judge -------------------------------------------------------------------------


@dataclass
class Isolation:
    """What separated the student's code from everything else, layer by layer, as it held.

    Filled in by the sandbox's own set-up code before any student code runs, and sent as its
    first message (so it cannot be forged by the student). ``errors`` keeps the system's own
    text for every layer that could not be had.
    """

    uid: bool = False  # ran as a uid of its own, not root and not the grader's
    net: bool = False  # network namespace: no interface but loopback
    mount: bool = False  # private root: only system, interpreter and a size-capped tmpfs
    pid: bool = False  # PID namespace: sees and can signal only its own processes
    ipc: bool = False  # IPC namespace: no SysV IPC or POSIX queues shared with the machine
    landlock: bool = False  # kernel-enforced file allowlist (and no TCP where the ABI allows)
    seccomp: bool = False  # no new network sockets, ptrace, mount, bpf, keyrings...
    sandbox_uid: int = -1
    landlock_abi: int = 0
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def level(self) -> str:
        held = [getattr(self, k) for k in LAYERS]
        return "full" if all(held) else ("none" if not any(held) else "reduced")

    def record(self) -> dict:
        """The form kept in every result: level, each layer, and why a layer is missing."""
        out: dict[str, Any] = {"level": self.level}
        out.update({k: getattr(self, k) for k in LAYERS})
        out["landlock_abi"] = self.landlock_abi
        if self.errors:
            out["errors"] = dict(self.errors)
        return out

    @classmethod
    def parse(cls, d: Any) -> Isolation:
        allowed = {f.name for f in fields(cls)}
        d = _only(d, allowed, "isolation")
        iso = cls()
        for k in LAYERS:
            if not isinstance(d.get(k, False), bool):
                raise ProtocolError(f"isolation.{k} must be true or false")
            setattr(iso, k, d.get(k, False))
        iso.sandbox_uid = _int(d, "sandbox_uid", -1, (1 << 32) - 2)
        iso.landlock_abi = _int(d, "landlock_abi", 0, 1000)
        errors = d.get("errors", {})
        if not isinstance(errors, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in errors.items()
        ):
            raise ProtocolError("isolation.errors must map layer names to text")
        iso.errors = {k[:40]: v[:500] for k, v in list(errors.items())[:16]}
        return iso


def weakest(records: list[dict]) -> dict:
    """Of several sandboxes' records (restarts), the one that held least: never claim more."""
    if not records:
        return {"level": "none", **{k: False for k in LAYERS}}
    return min(records, key=lambda r: sum(bool(r.get(k)) for k in LAYERS))
