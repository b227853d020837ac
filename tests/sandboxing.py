"""Shared helpers for tests about the sandbox: what this machine gives, and what is still alive."""

from __future__ import annotations

import functools
import os

from tensorgrade.confined.layers import unshare_namespaces


@functools.cache
def namespaces_here() -> bool:
    """Whether this test process could give a sandbox fresh namespaces (root, not refused)."""
    if os.geteuid() != 0:
        return False
    pid = os.fork()
    if pid == 0:
        try:
            unshare_namespaces()
            os._exit(0)
        except BaseException:  # noqa: BLE001
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


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
