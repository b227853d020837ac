"""Landlock: let an unprivileged process give up, for good, the files and sockets it does not need.

The sandbox calls `restrict` on itself before the student's first cell runs. From then on the
process and everything it forks can only open what the rules name: the interpreter and libraries
read-only, a scratch directory read-write, a few device files. On kernels that have them, TCP
bind/connect is denied outright and abstract unix sockets and signals cannot reach out of the
sandbox.

We call the three Landlock syscalls directly through ctypes instead of using a third-party binding:
the grader wants zero extra dependencies and full control over which ABI features are asked for,
so every right below is one we chose and one the running kernel said it knows.

Landlock applies to the calling thread and the threads and processes it creates afterwards, not to
threads that already exist: call `restrict` while the process is still single-threaded (before
torch or anything else starts a thread pool).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import sys
from collections.abc import Iterable
from dataclasses import dataclass

# Syscall numbers. Landlock came after the syscall tables were unified, so x86_64 and aarch64
# (and every other architecture we might meet) share them.
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446

LANDLOCK_CREATE_RULESET_VERSION = 1 << 0  # flag: return the ABI version instead of a ruleset
LANDLOCK_RULE_PATH_BENEATH = 1
PR_SET_NO_NEW_PRIVS = 38

# Filesystem rights (include/uapi/linux/landlock.h), with the ABI that introduced each.
ACCESS_FS_EXECUTE = 1 << 0
ACCESS_FS_WRITE_FILE = 1 << 1
ACCESS_FS_READ_FILE = 1 << 2
ACCESS_FS_READ_DIR = 1 << 3
ACCESS_FS_REMOVE_DIR = 1 << 4
ACCESS_FS_REMOVE_FILE = 1 << 5
ACCESS_FS_MAKE_CHAR = 1 << 6
ACCESS_FS_MAKE_DIR = 1 << 7
ACCESS_FS_MAKE_REG = 1 << 8
ACCESS_FS_MAKE_SOCK = 1 << 9
ACCESS_FS_MAKE_FIFO = 1 << 10
ACCESS_FS_MAKE_BLOCK = 1 << 11
ACCESS_FS_MAKE_SYM = 1 << 12
ACCESS_FS_REFER = 1 << 13  # ABI 2: link/rename across directories
ACCESS_FS_TRUNCATE = 1 << 14  # ABI 3
ACCESS_FS_IOCTL_DEV = 1 << 15  # ABI 5: ioctl on character/block devices

# Network rights (ABI 4) and scopes (ABI 6).
ACCESS_NET_BIND_TCP = 1 << 0
ACCESS_NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1

# The only rights a rule on a non-directory may carry; anything else makes the kernel answer EINVAL.
FILE_RIGHTS = (
    ACCESS_FS_EXECUTE
    | ACCESS_FS_WRITE_FILE
    | ACCESS_FS_READ_FILE
    | ACCESS_FS_TRUNCATE
    | ACCESS_FS_IOCTL_DEV
)
READ_RIGHTS = ACCESS_FS_EXECUTE | ACCESS_FS_READ_FILE | ACCESS_FS_READ_DIR
DEVICE_RIGHTS = (
    ACCESS_FS_READ_FILE | ACCESS_FS_WRITE_FILE | ACCESS_FS_TRUNCATE | ACCESS_FS_IOCTL_DEV
)


class _RulesetAttr(ctypes.Structure):
    """struct landlock_ruleset_attr. The kernel reads only the prefix whose size we pass, which is
    how an old kernel copes with a new caller (and we only pass fields the running ABI knows)."""

    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),  # ABI 1
        ("handled_access_net", ctypes.c_uint64),  # ABI 4
        ("scoped", ctypes.c_uint64),  # ABI 6
    ]


class _PathBeneathAttr(ctypes.Structure):
    """struct landlock_path_beneath_attr, which the kernel declares packed (12 bytes)."""

    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


@dataclass
class LandlockResult:
    """What `restrict` managed to enforce on this kernel."""

    abi: int
    net: bool  # TCP bind/connect denied (ABI >= 4)
    scoped: bool  # abstract unix sockets and signals scoped to the sandbox (ABI >= 6)


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _probe() -> tuple[int, int]:
    """(ABI version, errno). Asking with a NULL attribute and the VERSION flag creates nothing."""
    if not sys.platform.startswith("linux"):
        return 0, errno.ENOSYS
    try:
        libc = _libc()
        version = libc.syscall(
            ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET),
            ctypes.c_void_p(None),
            ctypes.c_size_t(0),
            ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION),
        )
        return (version, 0) if version > 0 else (0, ctypes.get_errno())
    except (OSError, AttributeError):  # no loadable libc, or no syscall() in it
        return 0, errno.ENOSYS


def abi_version() -> int:
    """Landlock ABI of the running kernel, 0 when Landlock is unavailable (never raises)."""
    return _probe()[0]


def _handled_fs(abi: int) -> int:
    """Every filesystem right this ABI knows: handling a right denies it wherever no rule grants
    it, so asking for all of them leaves nothing open by omission."""
    rights = (1 << 13) - 1  # ABI 1: EXECUTE .. MAKE_SYM
    if abi >= 2:
        rights |= ACCESS_FS_REFER
    if abi >= 3:
        rights |= ACCESS_FS_TRUNCATE
    if abi >= 5:
        rights |= ACCESS_FS_IOCTL_DEV
    return rights


def _ruleset_attr(abi: int) -> tuple[_RulesetAttr, int]:
    """The ruleset attribute for `abi` and the size to pass: only the fields that ABI knows, as
    a kernel older than the structure answers E2BIG when the extra bytes are not zero."""
    attr = _RulesetAttr(handled_access_fs=_handled_fs(abi))
    size = 8  # ABI 1-3: handled_access_fs only
    if abi >= 4:
        # Handle both TCP rights and add no rule for them: every bind and connect is denied.
        attr.handled_access_net = ACCESS_NET_BIND_TCP | ACCESS_NET_CONNECT_TCP
        size = 16
    if abi >= 6:
        attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        size = 24
    return attr, size


def _fail(call: str, detail: str = "") -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"landlock_{call}: {os.strerror(err)}{detail}")


def _add_path(libc: ctypes.CDLL, ruleset_fd: int, path: str, rights: int, handled: int) -> None:
    """Grant `rights` beneath `path` (or on it, for a file). A path that does not exist is
    skipped: the same rule list serves machines with and without /lib64, GPUs and so on."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= FILE_RIGHTS  # directory rights on a file are EINVAL
        attr = _PathBeneathAttr(allowed_access=rights & handled, parent_fd=fd)
        if attr.allowed_access == 0:
            return  # the kernel rejects an empty rule (ENOMSG); nothing to grant anyway
        rc = libc.syscall(
            ctypes.c_long(SYS_LANDLOCK_ADD_RULE),
            ctypes.c_int(ruleset_fd),
            ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH),
            ctypes.byref(attr),
            ctypes.c_uint32(0),
        )
        if rc != 0:
            raise _fail("add_rule", f" ({path}, access {attr.allowed_access:#x})")
    finally:
        os.close(fd)


def restrict(
    readonly: Iterable[str], writable: Iterable[str], devices: Iterable[str] = ()
) -> LandlockResult:
    """Restrict this process (and its future children) for good to the given paths.

    `readonly`: read files, list directories, execute (a regular file gets read and execute only).
    `writable`: every filesystem right beneath these directories.
    `devices`: device files (/dev/null, /dev/nvidia0, ...) opened for reading and writing,
    truncated, and (ABI >= 5) sent ioctls.
    With ABI >= 4 all TCP bind/connect is denied (no port is allowed); with ABI >= 6 abstract
    unix sockets and signals cannot reach processes outside this sandbox.
    Raises OSError carrying the kernel's errno and text when any step fails, including when the
    kernel has no Landlock: a sandbox that silently runs unconfined is worse than none.
    """
    abi = abi_version()
    if abi <= 0:
        err = _probe()[1] or errno.ENOSYS
        why = (
            "disabled at boot (add landlock to the lsm= kernel parameter)"
            if err == errno.EOPNOTSUPP
            else os.strerror(err)
        )
        raise OSError(err, f"Landlock is not available: {why}")

    attr, size = _ruleset_attr(abi)
    handled = attr.handled_access_fs
    libc = _libc()
    ruleset_fd = libc.syscall(
        ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET),
        ctypes.byref(attr),
        ctypes.c_size_t(size),
        ctypes.c_uint32(0),
    )
    if ruleset_fd < 0:
        raise _fail("create_ruleset", f" (abi {abi}, attr size {size})")
    try:
        for path in readonly:
            _add_path(libc, ruleset_fd, path, READ_RIGHTS, handled)
        for path in writable:
            _add_path(libc, ruleset_fd, path, handled, handled)
        for path in devices:
            # A device directory (/dev/dri) may also be listed; a device file gets file rights.
            _add_path(libc, ruleset_fd, path, DEVICE_RIGHTS | ACCESS_FS_READ_DIR, handled)

        # Required for an unprivileged caller, and what we want anyway: nothing exec'd later can
        # gain privileges (setuid binaries) that would let it step around the rules.
        no_new_privs()
        rc = libc.syscall(
            ctypes.c_long(SYS_LANDLOCK_RESTRICT_SELF),
            ctypes.c_int(ruleset_fd),
            ctypes.c_uint32(0),
        )
        if rc != 0:
            raise _fail("restrict_self")
    finally:
        os.close(ruleset_fd)
    return LandlockResult(abi=abi, net=abi >= 4, scoped=abi >= 6)


def no_new_privs() -> None:
    """PR_SET_NO_NEW_PRIVS for this process and its children, for good (Landlock and seccomp
    both require it of an unprivileged caller)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(
        ctypes.c_int(PR_SET_NO_NEW_PRIVS),
        ctypes.c_ulong(1),
        ctypes.c_ulong(0),
        ctypes.c_ulong(0),
        ctypes.c_ulong(0),
    ):
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(err)}")
