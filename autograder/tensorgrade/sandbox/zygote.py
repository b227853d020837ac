"""A fork server for sandboxes: imports torch and IPython once, forks one sandbox per request.

Started by the judge (``judge.sandbox.Zygote``) and talked to over a Unix socket. It never runs a
torch operation or touches CUDA (forking after either is unsafe); each child confines itself,
initialises CUDA if it needs it, and serves one submission. This makes a sandbox's start-up a
fork (tens of milliseconds) instead of a fresh interpreter importing torch (about a second).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the judge

    import IPython.core.interactiveshell  # noqa: F401
    import torch  # noqa: F401
    import traitlets.config  # noqa: F401

    from .. import portable, testing, wire  # noqa: F401
    from . import worker

    statuses: dict[int, int] = {}

    def reap() -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            statuses[pid] = os.waitstatus_to_exitcode(status)

    def exit_code(pid: int, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while pid not in statuses and time.monotonic() < deadline:
            reap()
            time.sleep(0.02)
        return statuses.pop(pid, None)

    sock.sendall(b'{"ready": true}')
    while True:
        msg, fds, _, _ = socket.recv_fds(sock, 1 << 20, 4)
        if not msg:
            return
        req = json.loads(msg)
        reap()
        if req["op"] == "spawn":
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    sock.close()
                    os.setsid()
                    cfg = dict(req["cfg"], req_fd=fds[0], resp_fd=fds[1])
                    worker.run(cfg)
                except OSError:
                    code = 97
                except BaseException:  # noqa: BLE001
                    code = 1
                os._exit(code)
            for fd in fds:
                os.close(fd)
            sock.sendall(json.dumps({"pid": pid}).encode())
        elif req["op"] == "reap":  # for a judge that runs as an unprivileged user
            _reap(req, exit_code)
            sock.sendall(b"{}")
        elif req["op"] == "status":
            code = exit_code(int(req["pid"]), float(req.get("timeout", 2.0)))
            sock.sendall(json.dumps({"code": code}).encode())


def _reap(req: dict, exit_code) -> None:
    """Kill one sandbox (its process group and every process of its uid), then remove its files."""
    import shutil
    import tempfile

    from .procs import BASE_UID, reap_uid

    pid, uid, base = req.get("pid"), req.get("uid"), str(req.get("base", ""))
    if isinstance(pid, int) and pid > 1:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        exit_code(pid, 5.0)
    if isinstance(uid, int) and uid >= BASE_UID:  # sandbox uids only: never root or the judge
        reap_uid(uid)
    tmp = os.path.realpath(tempfile.gettempdir())
    real = os.path.realpath(base)
    if os.path.dirname(real) == tmp and os.path.basename(real).startswith("tg-sandbox-"):
        shutil.rmtree(real, ignore_errors=True)


if __name__ == "__main__":
    main()
