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


# ---- judge <-> sandbox ------------------------------------------------------------------------
# Framed by ``wire`` (a JSON header plus tensor bytes). Every request of the judge carries a fresh
# random ``id`` that its answer must repeat: bytes a student's code wrote to the answer pipe
# ahead of time cannot pass for an answer to a later request. The sandbox's messages are the
# untrusted side: ``parse_answer`` turns a header into exactly one of the dataclasses below or
# raises ProtocolError, and the judge then treats the sandbox as dead. Tensor values (``value``)
# stay in their wire form here and are decoded, with ``wire``'s caps, by the receiver.

MAX_TEXT = 1 << 23  # characters of one text field (stdout, error); wire caps a header at 4 MiB
MAX_FIGURES = 64
MAX_FIGURE_TEXT = 2_000_000  # characters of one base64 PNG
MAX_SPEC_DEPTH = 8  # derivative and vmap levels of one remote evaluation
MAX_ARGS = 16  # tensors one remote evaluation takes
ERROR_KINDS = ("raised", "not_data", "bad_request", "check_failed")


@dataclass(frozen=True)
class Ready:
    """The sandbox's first message, sent by its own set-up code before any student code ran."""

    isolation: Isolation
    op: str = "ready"


@dataclass(frozen=True)
class Ran:
    """The answer to ``run``: whether the cell ran without an exception, its output, figures."""

    id: int
    ok: bool
    error: str
    stdout: str
    figures: list[str]
    op: str = "ran"


@dataclass(frozen=True)
class Names:
    """The answer to ``names``: which of the asked names exist, and whether each is callable."""

    id: int
    names: dict[str, bool]
    op: str = "names"


@dataclass(frozen=True)
class Value:
    """The answer to ``call``/``vjp``/``jvp``: the returned data, in wire form."""

    id: int
    value: Any
    op: str = "value"


@dataclass(frozen=True)
class Failed:
    """The answer to ``call``/``vjp``/``jvp`` when the student's code raised (``raised``), returned
    something that is not data (``not_data``), the request named nothing there (``bad_request``),
    or a check of ``testing`` that runs next to the student's code failed (``check_failed``: a
    backward changed its cotangent in place). ``error`` is the student's text: shown, if at all,
    only in public tests."""

    id: int
    kind: str
    error: str
    op: str = "error"


@dataclass(frozen=True)
class Eval:
    """Asked by the sandbox while it answers a request: evaluate the judge's remote function
    ``token`` (see ``wire.RemoteFunction``) as ``spec`` says, on the tensors in ``value`` (a wire
    list). The judge answers with ``Evaluated`` and keeps waiting for the request's answer."""

    id: int
    token: int
    spec: tuple
    value: Any
    op: str = "eval"


@dataclass(frozen=True)
class Done:
    """The answer to ``put`` (the assignment's data files)."""

    id: int | None
    ok: bool
    error: str = ""
    op: str = "done"


SandboxMessage = Ready | Ran | Names | Value | Failed | Eval | Done


def parse_answer(d: Any) -> SandboxMessage:
    """A message of the sandbox as one of the types above; anything else raises ProtocolError."""
    if not isinstance(d, dict):
        raise ProtocolError("a message is an object")
    op = d.get("op")
    if op == "ready":
        _only(d, {"op", "isolation"}, "ready")
        return Ready(Isolation.parse(d.get("isolation")))
    if op == "ran":
        _only(d, {"op", "id", "ok", "error", "stdout", "figures"}, "ran")
        figures = d.get("figures")
        if not isinstance(figures, list) or len(figures) > MAX_FIGURES:
            raise ProtocolError("figures must be a short list")
        if not all(isinstance(f, str) and len(f) <= MAX_FIGURE_TEXT for f in figures):
            raise ProtocolError("a figure must be text of bounded size")
        return Ran(_id(d), _bool(d, "ok"), _text(d, "error"), _text(d, "stdout"), figures)
    if op == "names":
        _only(d, {"op", "id", "names"}, "names")
        names = d.get("names")
        if not isinstance(names, dict) or not all(
            isinstance(k, str) and isinstance(v, bool) for k, v in names.items()
        ):
            raise ProtocolError("names must map names to true or false")
        return Names(_id(d), dict(names))
    if op == "value":
        _only(d, {"op", "id", "value"}, "value")
        if "value" not in d:
            raise ProtocolError("value missing")
        return Value(_id(d), d["value"])
    if op == "error":
        _only(d, {"op", "id", "kind", "error"}, "error")
        kind = d.get("kind")
        if kind not in ERROR_KINDS:
            raise ProtocolError("unknown kind of error")
        return Failed(_id(d), kind, _text(d, "error"))
    if op == "eval":
        _only(d, {"op", "id", "token", "spec", "value"}, "eval")
        return Eval(_id(d), _int(d, "token", 0, 1 << 62), parse_spec(d.get("spec")), d.get("value"))
    if op == "done":
        _only(d, {"op", "id", "ok", "error"}, "done")
        rid = d.get("id")
        return Done(None if rid is None else _id(d), _bool(d, "ok"), _text(d, "error"))
    raise ProtocolError("unknown kind of message")


def parse_spec(x: Any, depth: int = 0) -> tuple:
    """What a remote evaluation computes, as nested lists (the sandbox builds them as autograd and
    vmap reach a remote function): ``["f"]`` the function itself; ``["vjp", S, n]`` the pullback of
    S, whose first n inputs are S's and the rest cotangents of its outputs; ``["jvp", S, n]`` its
    pushforward (n inputs, then n tangents); ``["vmap", S, dims]`` S vectorised over a batch
    dimension of each input (an int, or null for an input without one)."""
    if depth > MAX_SPEC_DEPTH:
        raise ProtocolError("remote evaluation nested too deeply")
    if not isinstance(x, list) or not x:
        raise ProtocolError("malformed remote evaluation")
    kind = x[0]
    if kind == "f" and len(x) == 1:
        return ("f",)
    if kind in ("vjp", "jvp") and len(x) == 3:
        n = x[2]
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_ARGS:
            raise ProtocolError("malformed remote evaluation")
        return (kind, parse_spec(x[1], depth + 1), n)
    if kind == "vmap" and len(x) == 3:
        dims = x[2]
        if not (isinstance(dims, list) and 1 <= len(dims) <= 2 * MAX_ARGS) or not all(
            v is None or (isinstance(v, int) and not isinstance(v, bool) and -64 <= v < 64)
            for v in dims
        ):
            raise ProtocolError("malformed remote evaluation")
        return ("vmap", parse_spec(x[1], depth + 1), tuple(dims))
    raise ProtocolError("malformed remote evaluation")


def spec_is_pushforward(spec: tuple) -> bool:
    """Whether ``spec`` is the function itself pushed forward (possibly vectorised): what a call
    of it under ``torch.func.jvp`` or on dual tensors is in the student's kernel. The pushforward
    of a derivative of an earlier call (forward over reverse) is not another such call."""
    while spec[0] == "vmap":
        spec = spec[1]
    return spec[0] == "jvp" and spec_is_call(spec[1])


def spec_is_call(spec: tuple) -> bool:
    """Whether ``spec`` evaluates the function itself (possibly vectorised): one call of it, as
    the student's code would count it; derivatives of an earlier call are not calls."""
    while spec[0] == "vmap":
        spec = spec[1]
    return spec[0] == "f"


def _id(d: dict) -> int:
    return _int(d, "id", 0, 1 << 62)


def _bool(d: dict, key: str) -> bool:
    v = d.get(key)
    if not isinstance(v, bool):
        raise ProtocolError(f"{key} must be true or false")
    return v


def _text(d: dict, key: str) -> str:
    v = d.get(key, "")
    if not isinstance(v, str) or len(v) > MAX_TEXT:
        raise ProtocolError(f"{key} must be text of at most {MAX_TEXT} characters")
    return v
