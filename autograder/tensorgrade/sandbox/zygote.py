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
        elif req["op"] == "status":
            deadline = time.monotonic() + float(req.get("timeout", 2.0))
            pid = int(req["pid"])
            while pid not in statuses and time.monotonic() < deadline:
                reap()
                time.sleep(0.02)
            sock.sendall(json.dumps({"code": statuses.pop(pid, None)}).encode())


if __name__ == "__main__":
    main()
