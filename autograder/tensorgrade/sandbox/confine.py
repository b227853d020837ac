"""Confinement steps the sandbox process applies to itself before any student code runs.

Called as root in a fresh process that already has its own network and mount namespaces (the
judge unshares them between fork and exec). Order matters: hide paths while still root, then set
limits, then drop to the slot's unprivileged uid for good.
"""

from __future__ import annotations

import ctypes
import os
import resource

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND = 1, 2, 4, 32, 4096
MS_REC, MS_PRIVATE = 1 << 14, 1 << 18


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    libc = _libc()
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
    rc = libc.mount(
        source.encode(),
        target.encode(),
        fstype.encode() if fstype else None,
        flags,
        data.encode() if data else None,
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def hide_paths(paths: list[str]) -> list[str]:
    """Cover each path with an empty read-only tmpfs, visible only in this mount namespace."""
    _mount("none", "/", None, MS_REC | MS_PRIVATE, None)
    hidden = []
    for p in paths:
        if os.path.isdir(p) and not os.path.islink(p):
            _mount("tmpfs", p, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k,mode=000")
            hidden.append(p)
    return hidden


def expose(path: str, staging: str) -> bool:
    """Make ``path`` (e.g. the Python installation) reachable after the uid switch.

    If an ancestor such as ``/root`` (mode 700) blocks the way, cover that ancestor with an empty
    tmpfs and bind the real ``path`` back in, read-only. Everything else under it stays hidden.
    """
    parts = os.path.abspath(path).split(os.sep)[1:]
    blocked = None
    for i in range(1, len(parts)):
        d = os.sep + os.path.join(*parts[:i])
        if not os.stat(d).st_mode & 0o001:
            blocked = d
            break
    if blocked is None:
        return False
    _mount(path, staging, None, MS_BIND | MS_REC, None)
    _mount("tmpfs", blocked, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=755")
    os.makedirs(path, exist_ok=True)
    _mount(staging, path, None, MS_BIND | MS_REC, None)
    _mount("none", path, None, MS_BIND | MS_REMOUNT | MS_RDONLY, None)
    return True


def set_limits(limits: dict) -> None:
    def lim(res: int, value: int | None) -> None:
        if value:
            resource.setrlimit(res, (value, value))

    lim(resource.RLIMIT_NPROC, limits.get("processes"))
    lim(resource.RLIMIT_FSIZE, limits.get("file_bytes"))
    lim(resource.RLIMIT_CPU, limits.get("cpu_seconds"))
    lim(resource.RLIMIT_NOFILE, limits.get("open_files"))
    lim(resource.RLIMIT_AS, limits.get("memory_bytes"))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def drop_privileges(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise OSError("could not drop privileges")
