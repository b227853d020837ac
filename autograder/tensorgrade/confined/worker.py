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
        self.cap, self.parts, self.size, self.dropped = cap, [], 0, 0

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
    """Answer the judge's requests until it says exit (or closes the pipe)."""
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

    def send(header: dict) -> None:
        try:
            data, _ = wire.encode(header)
        except wire.WireError as e:
            data, _ = wire.encode({"ok": False, "error": str(e)})
        wire.write_all(resp_fd, data)

    send({"op": "ready", "isolation": asdict(isolation)})

    def rebuild(name: str, params: dict, pid: int):
        if name not in REGISTRY:
            raise wire.WireError(f"unknown portable function {name}")
        p = Portable(name, **params)
        portables[pid] = p
        return p

    def resolve(path: str):
        parts = path.split(".")
        obj = ns[parts[0]]
        for part in parts[1:]:
            obj = getattr(obj, part)
        return obj

    while True:
        try:
            header, blob = wire.split_frame(lambda n: wire.read_exact(req_fd, n))
        except EOFError:
            return
        op = header.get("op")
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
                send({"ok": True})
            except (OSError, ValueError) as e:
                send({"ok": False, "error": _error_text(e)})
            continue
        if op == "names":
            found = {}
            for n in header["names"]:
                if n in ns:
                    found[n] = callable(ns[n])
            send({"ok": True, "names": found})
            continue
        portables: dict[int, Portable] = {}
        try:
            dec = wire.Decoder(blob, {"cpu": "cpu", "cuda": "cuda"}, rebuild)
            args = dec.dec(header["value"])
            fn = resolve(header["path"])
            sink = _Capped(0)
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                if op == "call":
                    value = fn(*args["args"], **args["kwargs"])
                elif op == "vjp":
                    value = testing.vjp(fn, args["primals"], args["cotangents"])
                elif op == "jvp":
                    value = testing.jvp(fn, args["primals"], args["tangents"])
                else:
                    raise ValueError(f"unknown request {op!r}")
            calls = {str(k): p.calls for k, p in portables.items()}
            send({"ok": True, "value": value, "portable_calls": calls})
        except BaseException as e:  # noqa: BLE001 - every student failure becomes an answer
            if isinstance(e, (SystemExit, KeyboardInterrupt)):
                send({"ok": False, "error": f"{type(e).__name__} raised"})
            else:
                send({"ok": False, "error": _error_text(e)})


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
