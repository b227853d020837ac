"""Stand-ins for the student's names: calling one sends data to the sandbox and gets data back.

Functions a test hands to the student's code (``portable.Portable``) stay here: the sandbox gets
an opaque handle (``wire.RemoteFunction``) and asks the judge to evaluate it (``protocol.Eval``),
also for its derivatives and under vmap. So the judge evaluates them with its own torch, their
parameters never enter the sandbox, and their ``calls`` are counted here, where the student's
code cannot reach them.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .. import protocol, wire
from ..portable import REGISTRY, Portable
from ..results import CHECK_FAILED, CRASHED, NOT_DEFINED, RAISED, WRONG_TYPE
from .sandbox import sandbox_threads

# Portables whose tests look inside their autograd graph (how many tensors it saves): the
# sandbox must run their real torch ops, so they travel as name + parameters, as before. Their
# calls cannot be counted by the judge: their ``calls`` is set to NaN, which fails every
# comparison, so no test can pass by trusting a count the sandbox could forge.
LOCAL_PORTABLES = frozenset({"tanh_chain", "gated_chain"})
MAX_EVAL_BYTES = 256 * 2**20  # tensor bytes the sandbox may send for one remote evaluation
_DEVICES = {"cpu": "cpu", "cuda": "cuda"}
_EVAL_THREADS = max(1, int(sandbox_threads()) if sandbox_threads().isdigit() else 1)


class StudentError(Exception):
    """The student's code raised, timed out, crashed, or returned something that is not data.

    ``failure`` is its class (``results.FAILURES``): all that a hidden test shows of it. The
    message (the student's own exception text, say) is shown only by public tests, which run
    before any hidden input reaches the sandbox.
    """

    def __init__(self, message: str, failure: str):
        super().__init__(message[:1500])
        self.failure = failure


class SandboxGone(Exception):
    """The sandbox can no longer answer: it crashed, did not answer in time, sent something that
    is not one of our messages, or no time is left. ``failure`` is CRASHED or TIMED_OUT."""

    def __init__(self, failure: str, detail: str, malformed: bool = False):
        super().__init__(detail)
        self.failure = failure
        self.detail = detail
        self.malformed = malformed  # it sent something that is not the answer expected


class Proxy:
    """The student's object ``path`` (e.g. ``SoftThreshold.apply``) inside the sandbox."""

    def __init__(self, session: Any, path: str):
        self._session = session
        self._path = path

    def __getattr__(self, attr: str) -> Proxy:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return Proxy(self._session, f"{self._path}.{attr}")

    def __repr__(self) -> str:
        return f"<student's {self._path}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._request("call", {"args": args, "kwargs": kwargs})

    def __tg_vjp__(self, primals: tuple, cotangents: tuple, wrt: Any = None) -> Any:
        value = {"primals": primals, "cotangents": cotangents}
        return self._request("vjp", value if wrt is None else {**value, "wrt": list(wrt)})

    def __tg_jvp__(self, primals: tuple, tangents: tuple) -> Any:
        return self._request("jvp", {"primals": primals, "tangents": tangents})

    def __tg_source__(self) -> str:
        name = self._path.split(".")[0]
        src = self._session.definition_source(name)
        if src is None:
            raise StudentError(f"no definition of {name} found in the notebook", NOT_DEFINED)
        return src

    def _request(self, op: str, value: dict) -> Any:
        s = self._session
        lent: dict[int, Portable] = {}
        local: list[Portable] = []
        payload = _lend(value, s, lent, local)
        try:
            msg, blob = s.ask(
                {"op": op, "path": self._path, "value": payload},
                s.limits.call_timeout,
                (protocol.Value, protocol.Failed),
                lent=lent,
                portable_type=Portable if local else None,
            )
        except SandboxGone as e:
            raise StudentError(f"{self._path}: {e.detail}", e.failure) from None
        finally:
            for p in local:
                p.calls = p.pushforwards = math.nan
        if isinstance(msg, protocol.Failed):
            if msg.kind == "not_data":
                raise StudentError(
                    f"{self._path} returned something that is not data ({msg.error})", WRONG_TYPE
                )
            if msg.kind == "check_failed":  # a check of testing's that runs next to the code
                raise StudentError(f"{self._path}: {msg.error}", CHECK_FAILED)
            if msg.kind == "bad_request":
                raise StudentError(f"{self._path} could not be called: {msg.error}", NOT_DEFINED)
            raise StudentError(f"{self._path} raised {msg.error}", RAISED)
        try:
            return wire.Decoder(blob, device_map=_DEVICES).dec(msg.value)
        except wire.WireError as e:
            s.give_up(f"a malformed answer ({e})")
            raise StudentError(f"{self._path} sent a malformed answer", CRASHED) from None


def _lend(x: Any, session: Any, lent: dict, local: list, depth: int = 0) -> Any:
    """``x`` with each Portable replaced by a handle the sandbox can only ask us to evaluate."""
    if depth > wire.MAX_DEPTH:
        raise wire.WireError("nesting too deep")
    if isinstance(x, Portable):
        if x.name in LOCAL_PORTABLES:
            local.append(x)
            return x
        token = session.new_token()
        lent[token] = x
        return wire.RemoteFunction(token, x.name)
    if isinstance(x, tuple):
        return tuple(_lend(v, session, lent, local, depth + 1) for v in x)
    if isinstance(x, list):
        return [_lend(v, session, lent, local, depth + 1) for v in x]
    if isinstance(x, dict):
        return {k: _lend(v, session, lent, local, depth + 1) for k, v in x.items()}
    return x


def evaluation(msg: protocol.Eval, blob: bytes, lent: dict[int, Portable] | None) -> dict:
    """The judge's answer to an ``eval`` request: the header of an ``evaluated`` message.

    Counts one call of the Portable when the evaluation is of the function itself (possibly
    vectorised), not of a derivative of an earlier call, as the student's code would count it.
    A refused or failed evaluation is answered with an error: it raises in the student's code.
    Raises ``wire.WireError`` for inputs that are not well-formed tensors (a forged message).
    """
    answer = {"op": "evaluated", "id": msg.id}
    p = (lent or {}).get(msg.token)
    if p is None:
        return {**answer, "ok": False, "error": "this function is not available any more"}
    if len(blob) > MAX_EVAL_BYTES:
        return {**answer, "ok": False, "error": "the inputs are too large"}
    inputs = wire.Decoder(blob, device_map=_DEVICES).dec(msg.value)
    if not (
        isinstance(inputs, list)
        and 1 <= len(inputs) <= 2 * protocol.MAX_ARGS
        and all(type(t) is torch.Tensor for t in inputs)
    ):
        raise wire.WireError("the inputs of an evaluation must be a list of tensors")
    if protocol.spec_is_call(msg.spec):
        p.calls += 1
    if protocol.spec_is_pushforward(msg.spec):
        p.pushforwards += 1
    threads = torch.get_num_threads()
    torch.set_num_threads(_EVAL_THREADS)  # the sandbox's share of the cores, not the judge's
    try:
        out = _function(p, msg.spec)(*inputs)
        if not all(isinstance(t, torch.Tensor) for t in out):
            raise TypeError("the result is not a tuple of tensors")
    except Exception as e:  # noqa: BLE001 - the student's inputs did not suit the function
        return {**answer, "ok": False, "error": f"{type(e).__name__}: {e}"[:500]}
    finally:
        torch.set_num_threads(threads)
    return {**answer, "ok": True, "value": tuple(t.detach() for t in out)}


def _function(p: Portable, spec: tuple):
    """``spec`` of Portable ``p`` as a function of tensors returning a tuple of tensors."""
    kind = spec[0]
    if kind == "f":
        fn, params = REGISTRY[p.name], p.params

        def f(*xs):
            out = fn(*xs, **params)
            return tuple(out) if isinstance(out, (tuple, list)) else (out,)

        return f
    inner, arg = _function(p, spec[1]), spec[2]
    if kind == "vjp":

        def pullback(*xs):
            if len(xs) <= arg:
                raise ValueError("no cotangents")
            _, pull = torch.func.vjp(inner, *xs[:arg])
            return tuple(pull(tuple(xs[arg:])))

        return pullback
    if kind == "jvp":

        def pushforward(*xs):
            if len(xs) != 2 * arg:
                raise ValueError("as many tangents as inputs are needed")
            return tuple(torch.func.jvp(inner, tuple(xs[:arg]), tuple(xs[arg:]))[1])

        return pushforward

    def batched(*xs):
        if len(xs) != len(arg):
            raise ValueError("one batch dimension (or None) per input is needed")
        return tuple(torch.func.vmap(inner, in_dims=tuple(arg))(*xs))

    return batched
