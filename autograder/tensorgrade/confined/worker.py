"""Next to the student's cells: run them in an IPython shell and answer the judge's requests.

Runs after ``layers`` confined the process. It reads requests from one pipe and writes answers to
another; everything it sends is data (``tensorgrade.wire``), never pickle.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import sys
import traceback
from dataclasses import asdict

from ..protocol import Isolation


class _Capped(io.TextIOBase):
    """A stdout that keeps at most ``cap`` characters (an output flood costs nothing)."""

    def __init__(self, cap: int):
        self.cap, self.size, self.dropped = cap, 0, 0
        self.parts: list[str] = []

    def write(self, s: str) -> int:
        if self.size < self.cap:
            keep = s[: self.cap - self.size]
            self.parts.append(keep)
            self.size += len(keep)
            self.dropped += len(s) - len(keep)
        else:
            self.dropped += len(s)
        return len(s)

    def text(self) -> str:
        out = "".join(self.parts)
        return out + (f"\n[... {self.dropped} more characters not shown]" if self.dropped else "")


_FIGURE_BUDGET = 1_000_000  # PNG bytes per cell: an answer stays far below the wire's header cap


def _take_figures(max_bytes: int) -> list[str]:
    """PNGs (base64) of the figures a cell left open, then closed, as Jupyter's inline backend
    would show them: the student's own plots become part of their feedback report."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return []
    out, used = [], 0
    for num in plt.get_fignums():
        buf = io.BytesIO()
        try:
            plt.figure(num).savefig(buf, format="png", dpi=72)
        except Exception:  # noqa: BLE001 - a figure that cannot be drawn is simply not shown
            continue
        if used + buf.tell() <= max_bytes:
            out.append(base64.b64encode(buf.getvalue()).decode("ascii"))
            used += buf.tell()
    plt.close("all")
    return out


def _error_text(e: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(e), e)).strip()[:2000]


def serve(req_fd: int, resp_fd: int, isolation: Isolation, stdout_cap: int) -> None:
    """Answer the judge's requests until it says exit (or closes the pipe).

    Every answer is one of ``protocol``'s sandbox messages and repeats its request's ``id``.
    """
    import torch  # noqa: F401  (imported before any student code, like a kernel would)
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    from .. import testing, wire
    from ..portable import REGISTRY, Portable

    c = Config()
    c.HistoryManager.enabled = False
    shell = InteractiveShell.instance(config=c)
    shell.colors = "nocolor"
    ns = shell.user_ns
    judge = _Judge(req_fd, resp_fd)

    def send(header: dict) -> None:
        try:
            data, _ = wire.encode(header)
        except Exception as e:  # noqa: BLE001 - what the student's code returned is not data
            error = str(e) if isinstance(e, wire.WireError) else _error_text(e)
            data, _ = wire.encode(
                {"op": "error", "id": header.get("id"), "kind": "not_data", "error": error}
            )
        judge.write(data)

    send({"op": "ready", "isolation": asdict(isolation)})

    def rebuild(name: str, params: dict, pid: int):
        if name not in REGISTRY or not isinstance(params, dict):
            raise wire.WireError(f"unknown portable function {name}")
        return Portable(name, **params)

    def resolve(path: str):
        parts = path.split(".")
        obj = ns[parts[0]]
        for part in parts[1:]:
            obj = getattr(obj, part)
        return obj

    while True:
        try:
            header, blob = judge.read()
        except EOFError:
            return
        op, rid = header.get("op"), header.get("id")
        judge.request_id = rid
        if op == "exit":
            return
        if op == "run":
            out = _Capped(stdout_cap)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                res = shell.run_cell(header["source"], store_history=True)
                figures = _take_figures(_FIGURE_BUDGET)
            err = res.error_before_exec or res.error_in_exec
            send(
                {
                    "op": "ran",
                    "id": rid,
                    "ok": err is None,
                    "error": _error_text(err) if err else "",
                    "stdout": out.text(),
                    "figures": figures,
                }
            )
            continue
        if op == "put":
            try:
                _put_files(header, blob)
                send({"op": "done", "id": rid, "ok": True})
            except (OSError, ValueError) as e:
                send({"op": "done", "id": rid, "ok": False, "error": _error_text(e)})
            continue
        if op == "names":
            found = {}
            for n in header["names"]:
                if n in ns:
                    found[n] = bool(callable(ns[n]))
            send({"op": "names", "id": rid, "names": found})
            continue
        try:
            dec = wire.Decoder(
                blob, {"cpu": "cpu", "cuda": "cuda"}, rebuild, remote=judge.remote_function
            )
            args = dec.dec(header["value"])
            fn = resolve(header["path"])
        except Exception as e:  # noqa: BLE001 - a name that is gone, an input this side refuses
            send({"op": "error", "id": rid, "kind": "bad_request", "error": _error_text(e)})
            continue
        try:
            sink = _Capped(0)
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                if op == "call":
                    value = fn(*args["args"], **args["kwargs"])
                elif op == "vjp":
                    value = testing.vjp(fn, args["primals"], args["cotangents"], args.get("wrt"))
                elif op == "jvp":
                    value = testing.jvp(fn, args["primals"], args["tangents"])
                else:
                    raise ValueError(f"unknown request {op!r}")
        except testing.TestFailure as e:  # a check of testing's own, run here (vjp)
            send({"op": "error", "id": rid, "kind": "check_failed", "error": str(e)[:2000]})
            continue
        except BaseException as e:  # noqa: BLE001 - every student failure becomes an answer
            if isinstance(e, (SystemExit, KeyboardInterrupt)):
                error = f"{type(e).__name__} raised"
            else:
                error = _error_text(e)
            send({"op": "error", "id": rid, "kind": "raised", "error": error})
            continue
        send({"op": "value", "id": rid, "value": value})


class _Judge:
    """The two pipes to the judge, and the remote functions it lent for the current request.

    A remote function (``wire.RemoteFunction``) is evaluated by the judge, which keeps its
    parameters and counts its calls: calling one here sends an ``eval`` message and waits for the
    judge's ``evaluated`` answer. Autograd and ``torch.func`` (vjp, jvp, vmap, grad, hessian...)
    reach the judge through ``_remote_op``, as derivatives of the function the judge evaluates.
    """

    def __init__(self, req_fd: int, resp_fd: int):
        import threading

        self.req_fd, self.resp_fd = req_fd, resp_fd
        self.request_id = None
        self.lock = threading.Lock()
        self.op = _remote_op(self)

    def write(self, data: bytes) -> None:
        from .. import wire

        wire.write_all(self.resp_fd, data)

    def read(self) -> tuple[dict, bytes]:
        from .. import wire

        return wire.split_frame(lambda n: wire.read_exact(self.req_fd, n))

    def remote_function(self, token: int, name: str):
        return _RemoteFunction(self, token, name)

    def evaluate(self, token: int, spec: list, inputs: tuple) -> tuple:
        """Ask the judge for ``spec`` of function ``token`` at ``inputs``: a tuple of tensors."""
        from .. import wire

        msg = {"op": "eval", "id": self.request_id, "token": token, "spec": spec}
        msg["value"] = [None if x is None else _plain(x) for x in inputs]
        with self.lock:
            data, _ = wire.encode(msg)
            self.write(data)
            header, blob = self.read()
        if header.get("op") != "evaluated" or header.get("id") != self.request_id:
            raise RuntimeError("the grader did not answer the evaluation")
        if not header.get("ok"):
            raise RuntimeError(str(header.get("error", "the function could not be evaluated")))
        out = wire.Decoder(blob, {"cpu": "cpu", "cuda": "cuda"}).dec(header.get("value"))
        if not isinstance(out, tuple):
            raise RuntimeError("the grader's answer is not a tuple")
        return out


def _plain(x):
    import torch

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"a function of the grader takes tensors, not {type(x).__name__}")
    if _is_legacy_batched(x):  # left batched by a legacy vmap nested in another one
        raise RuntimeError(
            "a function the grader lends cannot be batched twice by torch.autograd's legacy "
            "batching (nested is_grads_batched or vectorize=True): use torch.func instead"
        )
    return torch.Tensor.detach(x)


def _is_legacy_batched(x) -> bool:
    import torch

    legacy = getattr(torch._C._functorch, "is_legacy_batchedtensor", None)
    return isinstance(x, torch.Tensor) and legacy is not None and bool(legacy(x))


def _unbatch_legacy(xs: tuple) -> tuple[int, tuple, list] | None:
    """Inputs batched by torch.autograd's own (legacy) vmap: ``is_grads_batched=True``, and
    ``torch.autograd.functional.jacobian(..., vectorize=True)`` which uses it. Their physical
    tensors (batch first), the batch dimension of each (None: not batched), and the vmap level
    to batch the answer at again; None where no input is batched that way."""
    import torch

    if not any(_is_legacy_batched(x) for x in xs):
        return None
    level = torch._C._vmapmode_increment_nesting() - 1  # the innermost legacy vmap's level
    torch._C._vmapmode_decrement_nesting()
    physical: list = []
    dims: list[int | None] = []
    for x in xs:
        if _is_legacy_batched(x):
            physical.append(torch._remove_batch_dim(x, level, 1, 0))  # a size for unbatched only
            dims.append(0)
        else:
            physical.append(x)
            dims.append(None)
    return level, tuple(physical), dims


class _RemoteFunction:
    """The sandbox's side of a function the judge lent: callable on tensors, differentiable."""

    def __init__(self, judge: _Judge, token: int, name: str):
        self._judge, self._token, self.name = judge, token, name

    def __call__(self, *args, **kwargs):
        if kwargs:
            raise TypeError(f"{self.name} takes tensors as positional arguments only")
        for x in args:
            if not _is_legacy_batched(x):  # batched ones are checked once unbatched
                _plain(x)
        out = self._judge.op((self._token, ("f",)), *args)
        return out[0] if len(out) == 1 else out

    def __repr__(self) -> str:
        return f"Portable({self.name!r})"


def _remote_op(judge: _Judge):
    """An autograd.Function whose forward, backward, jvp and vmap rule are evaluations by the
    judge. Its first argument is ``(token, spec)``; ``spec`` grows as derivatives and batching
    are taken (``("vjp", spec, n)``, ``("jvp", spec, n)``, ``("vmap", spec, dims)``; see
    ``protocol.parse_spec``), so whatever torch composes, the judge computes with its own torch."""
    import torch

    def as_list(spec: tuple) -> list:
        if spec[0] == "f":
            return ["f"]
        arg = list(spec[2]) if spec[0] == "vmap" else spec[2]
        return [spec[0], as_list(spec[1]), arg]

    class Remote(torch.autograd.Function):
        @staticmethod
        def forward(what, *xs):
            token, spec = what
            return judge.evaluate(token, as_list(spec), xs)

        @staticmethod
        def setup_context(ctx, inputs, output):
            what, *xs = inputs
            ctx.what, ctx.n_in = what, len(xs)
            ctx.save_for_backward(*xs)
            ctx.save_for_forward(*xs)

        @staticmethod
        def backward(ctx, *grads):  # grads of unused outputs arrive as zeros (materialised)
            token, spec = ctx.what
            res = apply((token, ("vjp", spec, ctx.n_in)), *ctx.saved_tensors, *grads)
            return (None, *res)

        @staticmethod
        def jvp(ctx, _what_tangent, *tangents):
            token, spec = ctx.what
            xs = ctx.saved_tensors
            ts = [
                torch.zeros_like(x) if t is None else t for x, t in zip(xs, tangents, strict=True)
            ]
            return apply((token, ("jvp", spec, ctx.n_in)), *xs, *ts)

        @staticmethod
        def vmap(info, in_dims, what, *xs):
            token, spec = what
            out = apply((token, ("vmap", spec, tuple(in_dims[1:]))), *xs)
            return out, tuple(0 for _ in out)

    def apply(what: tuple, *xs):
        """``Remote.apply``; inputs batched by torch.autograd's legacy vmap are sent as a vmap
        of their physical tensors and the answer is batched again, both outside ``Remote`` so
        that autograd records the unbatching (a derivative through it stays connected)."""
        legacy = _unbatch_legacy(xs)
        if legacy is None:
            return Remote.apply(what, *xs)
        level, physical, dims = legacy
        token, spec = what
        out = Remote.apply((token, ("vmap", spec, tuple(dims))), *physical)
        return tuple(torch._add_batch_dim(o, 0, level) for o in out)

    return apply


def _put_files(header: dict, blob: bytes) -> None:
    """The assignment's data files, sent by the judge (the sandbox cannot see the course)."""
    from .. import wire

    files = wire.Decoder(blob, {"cpu": "cpu"}).dec(header.get("value"))
    if not isinstance(files, dict):
        raise ValueError("files must be a mapping")
    for name, data in files.items():
        parts = str(name).split("/")
        if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"bad file name {name!r}")
        if len(parts) > 1:
            os.makedirs(os.path.join(*parts[:-1]), exist_ok=True)
        with open(name, "wb") as f:
            f.write(data.numpy().tobytes())
