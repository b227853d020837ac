"""Finding and killing every process of a sandbox uid: used by the judge, or by the zygote on its
behalf when the judge runs as an unprivileged user (only root may kill another uid's processes)."""

from __future__ import annotations

import os
import signal
import time

BASE_UID = 61000  # sandbox slot k runs as uid/gid BASE_UID + k


def reap_uid(uid: int, patience: float = 20.0) -> None:
    """SIGKILL every process of ``uid`` (daemons that left the process group included), until
    none is left alive. Hundreds of processes (a fork bomb) can take a while to die on a busy
    machine, so this keeps killing and checking for up to ``patience`` seconds."""
    deadline = time.monotonic() + patience
    while True:
        pid = os.fork()
        if pid == 0:
            try:
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
                os.kill(-1, signal.SIGKILL)
            except OSError:
                pass
            os._exit(0)
        os.waitpid(pid, 0)
        if not uid_processes(uid) or time.monotonic() > deadline:
            return
        time.sleep(0.1)


def uid_processes(uid: int) -> list[int]:
    """Live processes of ``uid`` (zombies excluded: they run nothing and wait for a reaper)."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.stat(f"/proc/{d}").st_uid != uid:
                    continue
                with open(f"/proc/{d}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
                if state not in ("Z", "X"):
                    pids.append(int(d))
            except (OSError, IndexError):
                pass
    return pids
