"""The sandbox confines itself, layer by layer, before any student code runs.

Runs in the sandbox process, forked by the zygote. When the zygote is root, the supervisor has
already entered fresh mount, network, IPC, UTS and PID namespaces (this process is the first of
its PID namespace). Each layer is applied where it can be and recorded exactly as it held, with
the system's own error text when it did not:

    namespaces -> private root (size-capped tmpfs, private /dev and /proc) -> rlimits
    -> own uid (drop root for good) -> Landlock (file allowlist, no TCP) -> seccomp

Landlock and seccomp need no privilege, so a grader without root still gets them.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import os
import resource
import select
import signal
from dataclasses import dataclass, field

from ..protocol import Isolation, SandboxLimits
from . import landlock, seccomp

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 1, 2, 4, 8, 32, 4096
MS_REC, MS_PRIVATE = 1 << 14, 1 << 18
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
NAMESPACES = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWNET
PR_SET_PDEATHSIG = 1

# What a private root shows of the machine, read-only (plus the interpreter's own folders).
SYSTEM_DIRS = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/sys"]
DEV_NODES = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"]
INSIDE_WORKDIR = "/home/student"  # the student's HOME; nothing of the machine is mounted there

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare_namespaces() -> None:
    """Leave the machine's mount table, network, IPC, host name and process tree."""
    _check(_libc.unshare(NAMESPACES), "unshare")


def gpu_devices() -> list[str]:
    """The NVIDIA device nodes a CUDA client opens (control, UVM, one per GPU, capabilities)."""
    return sorted(glob.glob("/dev/nvidia*") + glob.glob("/dev/nvidia-caps/*"))


@dataclass
class Plan:
    """What the zygote decided for one sandbox (the sandbox only carries it out)."""

    uid: int  # the sandbox's uid; the grader's own when not root
    privileged: bool  # this process is root and must drop it
    namespaces: bool  # the supervisor entered fresh namespaces
    ns_error: str  # why not, in the system's words
    workdir: str  # on disk: used only where no private root can be had
    root_mount: str  # an empty folder to mount the private root's tmpfs on
    readonly: list[str]  # the interpreter, its packages, tensorgrade (besides SYSTEM_DIRS)
    limits: SandboxLimits
    alive_fd: int  # read end of a pipe the supervisor holds: EOF means it is gone
    reachable: bool = True  # other uids can reach every ``readonly`` folder without a private root
    devices: list[str] = field(default_factory=list)


def enter(plan: Plan) -> tuple[Isolation, str]:
    """Apply every layer that can be had; returns what held and the workdir to run in."""
    iso = Isolation(sandbox_uid=plan.uid)
    workdir = plan.workdir
    if plan.namespaces:
        iso.net = iso.pid = iso.ipc = True
        _libc.sethostname(b"sandbox", 7)
        try:
            workdir = private_root(plan)
            iso.mount = True
        except OSError as e:
            iso.errors["mount"] = str(e)
    else:
        iso.errors["namespaces"] = plan.ns_error
    if not iso.mount:
        if plan.privileged and not plan.reachable:
            raise OSError(
                errno.EACCES,
                "without a private root the sandbox uid cannot reach the Python installation "
                f"({', '.join(plan.readonly)}): make the folders above it searchable by others "
                f"(chmod o+x) or allow namespaces (see `tensorgrade doctor`); {iso.errors}",
            )
        os.makedirs(os.path.join(workdir, "tmp"), exist_ok=True)
        if plan.privileged:
            _hand_over(workdir, plan.uid)
    set_limits(plan.limits)
    if plan.privileged:
        drop_privileges(plan.uid, plan.uid)
        iso.uid = plan.uid != 0
    else:
        iso.errors["uid"] = "not root: the student's code runs as the grader's own user"
    _die_with_supervisor(plan.alive_fd)
    iso.landlock_abi = landlock.abi_version()
    writable = [workdir, "/tmp", "/dev/shm"] if iso.mount else [workdir]
    try:
        landlock.restrict(
            readonly=[*SYSTEM_DIRS, "/proc", *plan.readonly],
            writable=writable,
            devices=DEV_NODES + plan.devices,
        )
        iso.landlock = True
    except OSError as e:
        iso.errors["landlock"] = str(e)
    try:
        seccomp.install()
        iso.seccomp = True
    except OSError as e:
        iso.errors["seccomp"] = str(e)
    return iso, workdir


def _die_with_supervisor(alive_fd: int) -> None:
    """Changing uid clears the parent-death signal: set it again, then make sure the supervisor
    did not end in between (its end of the pipe would be closed)."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    ready, _, _ = select.select([alive_fd], [], [], 0)
    if ready:
        os._exit(1)
    os.close(alive_fd)


def _hand_over(workdir: str, uid: int) -> None:
    """Make the on-disk working directory the sandbox uid's (only where there is no tmpfs)."""
    for dirpath, dirnames, filenames in os.walk(workdir):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.chown(name, uid, uid, follow_symlinks=False)
    os.chmod(workdir, 0o700)


# ---- the private root -------------------------------------------------------------------------


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    rc = _libc.mount(
        source.encode() if source else None,
        target.encode(),
        fstype.encode() if fstype else None,
        flags,
        data.encode() if data else None,
    )
    _check(rc, f"mount {target}")


def make_mounts_private(scratch: str) -> None:
    """Stop our mounts from propagating to the machine. Where ``/`` is not a mount point (a plain
    chroot), ``/`` itself cannot be changed (EINVAL): step out of the chroot to the namespace's
    real root (we are root in a private mount namespace), change it there, and step back in.
    ``scratch`` is an empty folder inside the current root."""
    try:
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
        return
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
    back = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.chdir("/")
        os.chroot(scratch)  # the cwd is now outside the root, so ".." is not clamped
        for _ in range(1024):
            os.chdir("..")
        os.chroot(".")
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
    finally:
        os.fchdir(back)
        os.chroot(".")
        os.close(back)


def private_root(plan: Plan) -> str:
    """Build and enter a root that holds the system folders (read-only), the interpreter and its
    packages (read-only), a private /dev and /proc, and one size-capped tmpfs for the workdir,
    /tmp and /dev/shm. The course, other submissions, results and homes do not exist inside;
    everything written is gone when the namespace ends."""
    new = plan.root_mount
    make_mounts_private(new)
    size = plan.limits.tmpfs_bytes
    _mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},mode=755")
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            os.symlink(os.readlink(d), new + d)
        elif os.path.isdir(d):
            _bind(d, new + d, writable=False)
    for p in plan.readonly:
        if os.path.exists(p) and not os.path.exists(new + p):
            _bind(p, new + p, writable=False)
    _private_dev(new, plan.devices)
    os.makedirs(new + "/proc")
    _mount("proc", new + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for d, mode in (("/tmp", 0o1777), (INSIDE_WORKDIR, 0o700)):
        os.makedirs(new + d, exist_ok=True)
        os.chmod(new + d, mode)
    os.makedirs(new + INSIDE_WORKDIR + "/tmp", exist_ok=True)
    if plan.privileged:
        _hand_over(new + INSIDE_WORKDIR, plan.uid)
    _accounts(new, plan.uid)
    os.chroot(new)
    os.chdir("/")
    return INSIDE_WORKDIR


def _bind(src: str, dst: str, writable: bool) -> None:
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        open(dst, "a").close()
    _mount(src, dst, None, MS_BIND | MS_REC)
    if not writable:
        _mount(None, dst, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID)


def _private_dev(new: str, devices: list[str]) -> None:
    """A /dev with only the harmless nodes, the GPU's, and a /dev/shm inside the tmpfs."""
    os.makedirs(new + "/dev/shm")
    os.chmod(new + "/dev/shm", 0o1777)
    for node in DEV_NODES + devices:
        if os.path.exists(node) and not os.path.isdir(node):
            _bind(node, new + node, writable=True)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0")):
        os.symlink(target, f"{new}/dev/{name}")
    os.symlink("/proc/self/fd/1", new + "/dev/stdout")
    os.symlink("/proc/self/fd/2", new + "/dev/stderr")


def _accounts(new: str, uid: int) -> None:
    """passwd and group entries for the sandbox uid (getpwuid() must not fail for it)."""
    home = INSIDE_WORKDIR
    files = {
        "passwd": f"root:x:0:0::/root:/bin/sh\nstudent:x:{uid}:{uid}::{home}:/bin/sh\n",
        "group": f"root:x:0:\nstudent:x:{uid}:\n",
    }
    os.makedirs(new + "/.accounts")
    for name, text in files.items():
        path = f"{new}/.accounts/{name}"
        with open(path, "w") as f:
            f.write(text)
        if os.path.exists(new + "/etc/" + name):
            _mount(path, new + "/etc/" + name, None, MS_BIND)
            _mount(None, new + "/etc/" + name, None, MS_BIND | MS_REMOUNT | MS_RDONLY)


# ---- limits and uid ---------------------------------------------------------------------------


def set_limits(limits: SandboxLimits) -> None:
    def lim(res: int, value: int) -> None:
        if value:
            resource.setrlimit(res, (value, value))

    lim(resource.RLIMIT_NPROC, limits.processes)
    lim(resource.RLIMIT_FSIZE, limits.file_bytes)
    lim(resource.RLIMIT_CPU, limits.cpu_seconds)
    lim(resource.RLIMIT_NOFILE, limits.open_files)
    lim(resource.RLIMIT_AS, limits.memory_bytes)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def drop_privileges(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getresgid() != (gid, gid, gid):
        raise OSError("could not drop privileges")
