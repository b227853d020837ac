"""Sandbox uids: one per live sandbox, unique on the machine without relying on a shared /tmp.

Graders in two containers, two Slurm jobs with private /tmp folders, or two courses on one server
must never hand one uid to two sandboxes. So a uid is drawn at random from a large range that no
account uses, checked free in /proc and in the user database, and held by binding an abstract Unix
socket named after it (abstract names live in the kernel, per network namespace, and vanish when
the holder dies: no stale lock files). Killing never goes by uid anyway (see ``cleanup``), so even
two graders in different network and PID namespaces that drew the same uid could not harm each
other's sandboxes.
"""

from __future__ import annotations

import os
import pwd
import random
import socket

BASE_UID = 1_900_000_000  # far above regular accounts and the usual subuid ranges
SPAN = 1 << 24


class NoFreeUid(OSError):
    pass


def uid_in_use(uid: int) -> bool:
    """Whether any process visible here runs as ``uid`` (real or effective) or an account has it."""
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        pass
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        if str(uid) in line.split()[1:]:
                            return True
                        break
        except OSError:
            continue
    return False


def allocate(rng: random.Random | None = None, tries: int = 64) -> tuple[int, socket.socket]:
    """A free sandbox uid and the lock that holds it (close the socket to release the uid)."""
    rng = rng or random.SystemRandom()
    for _ in range(tries):
        uid = BASE_UID + rng.randrange(SPAN)
        lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            lock.bind(f"\0tensorgrade-uid-{uid}")
        except OSError:
            lock.close()
            continue
        if uid_in_use(uid):
            lock.close()
            continue
        return uid, lock
    raise NoFreeUid(f"no free sandbox uid after {tries} tries")
