"""Confinement steps the sandbox process applies to itself before any student code runs.

Called as root in a fresh process that already has its own network and mount namespaces (the
judge unshares them between fork and exec). Order matters: build the private root while still
root, then set limits, then drop to the slot's unprivileged uid for good.
"""

from __future__ import annotations

import ctypes
import os
import resource

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND = 1, 2, 4, 32, 4096
MS_REC, MS_PRIVATE = 1 << 14, 1 << 18
SYSTEM_DIRS = [
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc",
    "/dev",
    "/sys",
    "/proc",
]


CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000


def unshare_namespaces() -> None:
    """Leave the machine's network (none is left) and mount table (so mounts stay private)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS | CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare: {os.strerror(err)}")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
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


def _bind(src: str, dst: str, writable: bool) -> None:
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
    elif not os.path.exists(dst):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        open(dst, "a").close()
    _mount(src, dst, None, MS_BIND | MS_REC, None)
    if not writable:
        _mount("none", dst, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID, None)


def enter_root(
    newroot: str, readonly: list[str], writable: list[str], accounts: dict[str, str] | None = None
) -> list[str]:
    """Switch to a root that holds only the system, the Python installation and the workdir.

    Everything else on the machine (masters, hidden tests, other submissions, results, homes)
    does not exist inside. Runs as root in a private mount namespace; after the uid switch the
    process cannot leave the chroot.
    """
    _mount("none", "/", None, MS_REC | MS_PRIVATE, None)
    _mount("tmpfs", newroot, "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=755")
    shown = []
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            os.symlink(os.readlink(d), newroot + d)
        elif os.path.isdir(d):
            # /dev stays as it is (GPU device nodes are opened read-write; /dev is root-owned)
            _bind(d, newroot + d, writable=(d == "/dev"))
            shown.append(d)
    for p in readonly:
        if os.path.exists(p):
            _bind(p, newroot + p, writable=False)
            shown.append(p)
    for p in writable:
        _bind(p, newroot + p, writable=True)
        shown.append(p)
    for name, text in (accounts or {}).items():  # so that getpwuid() knows the sandbox uid
        path = os.path.join(os.path.dirname(newroot), name)
        with open(path, "w") as f:
            f.write(text)
        _bind(path, newroot + "/etc/" + name, writable=False)
    os.makedirs(newroot + "/tmp", exist_ok=True)
    os.chmod(newroot + "/tmp", 0o1777)
    os.chroot(newroot)
    os.chdir("/")
    return shown


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
