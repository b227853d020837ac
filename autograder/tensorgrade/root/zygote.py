"""The zygote: a fork server that starts, supervises, kills and cleans up sandboxes.

Started by the judge (``judge.sandbox.Zygote``) with an allowlisted environment and talked to over
a Unix socket in typed messages (``protocol``). It imports torch and IPython once and forks one
sandbox per request, so a sandbox starts in tens of milliseconds instead of a second. It never runs
a torch operation or touches CUDA (forking after either is unsafe).

Every privilege decision is made here, from this process's own state, never from the request: the
sandbox's uid (a fresh one when root, see ``uids``), whether namespaces and a private root are
used, what the sandbox may read. A request only names a slot and limits, validated.

Process tree of one sandbox::

    zygote ── supervisor (root or the grader; child subreaper; namespaces entered here)
                └── sandbox (first process of its PID namespace when root) ── student processes

Killing the supervisor's tree kills exactly that sandbox: every orphan of the sandbox is
re-parented to the supervisor, and with a PID namespace the kernel kills the rest.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .. import protocol, settings
from ..confined import layers
from . import cleanup, uids

PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass
class Child:
    uid: int
    lock: socket.socket | None
    workdir: str


class _Stop(Exception):
    pass


def _preload(modules: list[str]) -> None:
    """Import what every sandbox would (``judge.warm``), once, before any fork; a module that
    fails to import is left for the sandbox to import (and to fail on) itself."""
    import importlib

    for m in modules:
        try:
            importlib.import_module(m)
        except Exception as e:  # noqa: BLE001 - a head start only
            print(f"zygote: could not preload {m}: {e}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="tensorgrade.root.zygote")
    ap.add_argument("fd", type=int)
    ap.add_argument("--hide", action="append", default=[], help="never visible to a sandbox")
    ap.add_argument("--no-namespaces", action="store_true")
    ap.add_argument("--preload", action="append", default=[], help="imported before forking")
    args = ap.parse_args(argv)
    sock = socket.socket(fileno=args.fd)
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # die with the judge
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans of a dead supervisor come here

    import IPython.core.interactiveshell  # noqa: F401
    import torch  # noqa: F401
    import traitlets.config  # noqa: F401

    from .. import portable, testing, wire  # noqa: F401
    from ..confined import sandbox, worker  # noqa: F401

    _preload(args.preload)
    z = Zygote(sock, [Path(p) for p in args.hide], namespaces=not args.no_namespaces)
    try:
        z.serve()
    finally:
        z.shutdown()
    # Everything is cleaned up; skip the interpreter's teardown of torch, which takes from a
    # tenth of a second to seconds on a busy machine while the judge waits for us to end.
    sys.stderr.flush()
    os._exit(0)


class Zygote:
    def __init__(self, sock: socket.socket, hidden: list[Path], namespaces: bool):
        self.sock = sock
        self.privileged = os.geteuid() == 0
        self.namespaces = namespaces and self.privileged
        self.ns_error = (
            "asked for reduced isolation (--isolation reduced)"
            if not namespaces
            else "not root: namespaces need root (or CAP_SYS_ADMIN)"
        )
        self.readonly = visible_paths(hidden)
        self.reachable = others_can_use(self.readonly)
        self.base = tempfile.mkdtemp(prefix="tg-zygote-")
        os.chmod(self.base, 0o711)  # sandbox uids may pass through to their own workdir only
        self.root_mount = os.path.join(self.base, "root")
        os.mkdir(self.root_mount, 0o700)
        self.children: dict[int, Child] = {}
        self.statuses: dict[int, int] = {}

    def serve(self) -> None:
        self.sock.sendall(json.dumps({"ready": True, "base": self.base}).encode())
        while True:
            msg, fds, _, _ = socket.recv_fds(self.sock, protocol.MAX_MESSAGE + 1, 4)
            if not msg:
                return
            try:
                req = protocol.parse_zygote_request(msg)
            except protocol.ProtocolError as e:
                for fd in fds:
                    os.close(fd)
                self.sock.sendall(protocol.encode(protocol.Spawned(0, 0, f"refused: {e}")))
                continue
            self._reap_statuses()
            reply: protocol.Spawned | protocol.Reaped | protocol.Exited
            if isinstance(req, protocol.Spawn):
                reply = self.spawn(req, fds)
            else:
                for fd in fds:
                    os.close(fd)
                if isinstance(req, protocol.Reap):
                    reply = protocol.Reaped(self.reap(req.pid))
                else:
                    reply = protocol.Exited(self.exit_code(req.pid, req.timeout))
            self.sock.sendall(protocol.encode(reply))

    def spawn(self, req: protocol.Spawn, fds: list[int]) -> protocol.Spawned:
        if len(fds) != 3:
            for fd in fds:
                os.close(fd)
            return protocol.Spawned(0, 0, "a spawn request carries exactly three descriptors")
        lock = None
        try:
            uid, lock = uids.allocate() if self.privileged else (os.getuid(), None)
            workdir = tempfile.mkdtemp(prefix=f"s{req.slot}-", dir=self.base)
        except OSError as e:
            for fd in fds:
                os.close(fd)
            if lock is not None:
                lock.close()
            return protocol.Spawned(0, 0, f"could not prepare a sandbox: {e}")
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                code = self._supervise(req, fds, uid, workdir)
            finally:
                os._exit(code)
        for fd in fds:
            os.close(fd)
        self.children[pid] = Child(uid, lock, workdir)
        return protocol.Spawned(pid, uid)

    def _supervise(self, req: protocol.Spawn, fds: list[int], uid: int, workdir: str) -> int:
        """In the supervisor: enter namespaces, start the sandbox, wait for it, kill what it left."""
        req_fd, resp_fd, err_fd = fds
        self.sock.close()
        os.setsid()
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        os.dup2(err_fd, 2)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1):
            os.dup2(null, fd)
        os.close(null)
        os.close(err_fd)
        sys.stderr = open(2, "w", closefd=False)
        entered, ns_error = False, self.ns_error
        if self.namespaces:
            try:
                layers.unshare_namespaces()
                entered = True
            except OSError as e:
                ns_error = str(e)
        alive_r, alive_w = os.pipe()
        plan = layers.Plan(
            uid=uid,
            privileged=self.privileged,
            namespaces=entered,
            ns_error=ns_error,
            workdir=workdir,
            root_mount=self.root_mount,
            readonly=self.readonly,
            limits=req.limits,
            alive_fd=alive_r,
            reachable=self.reachable,
            devices=layers.gpu_devices(),
        )
        child = os.fork()
        if child == 0:
            os.close(alive_w)
            code = protocol.EXIT_SETUP
            try:
                from ..confined import sandbox

                code = sandbox.run(plan, req_fd, resp_fd, req.limits.stdout_chars)
            except BaseException as e:  # noqa: BLE001 - the judge reads stderr to say why
                print(f"sandbox set-up failed: {e}", file=sys.stderr, flush=True)
            finally:
                os._exit(code)
        os.close(alive_r)
        os.close(req_fd)
        os.close(resp_fd)
        return _wait_then_clean(child, workdir, req.limits.tmpfs_bytes)

    def reap(self, pid: int) -> list[int]:
        """Kill one sandbox's supervisor tree, then remove its files and free its uid."""
        child = self.children.get(pid)
        if child is None:
            return []
        pids = cleanup.descendants(pid)
        try:
            os.kill(pid, signal.SIGTERM)  # the supervisor kills its tree and exits
        except OSError:
            pass
        if self.exit_code(pid, 10.0) is None:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
            self.exit_code(pid, 5.0)
        self._kill_orphans()
        cleanup.remove_tree(child.workdir)
        if child.lock is not None:
            child.lock.close()
        del self.children[pid]
        self.statuses.pop(pid, None)
        return pids

    def _kill_orphans(self) -> None:
        """Processes re-parented to the zygote (a supervisor died before its tree): kill them."""
        mine = set(self.children)
        for p in cleanup.children_map().get(os.getpid(), []):
            if p not in mine:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
        self._reap_statuses()

    def exit_code(self, pid: int, timeout: float) -> int | None:
        """The supervisor's exit code (kept until the sandbox is reaped), waiting up to timeout."""
        deadline = time.monotonic() + timeout
        while pid not in self.statuses and time.monotonic() < deadline:
            self._reap_statuses()
            if pid not in self.statuses:
                time.sleep(0.002)  # a killed supervisor ends within milliseconds
        return self.statuses.get(pid)

    def _reap_statuses(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.children:
                self.statuses[pid] = os.waitstatus_to_exitcode(status)

    def shutdown(self) -> None:
        for pid in list(self.children):
            self.reap(pid)
        cleanup.remove_tree(self.base)


def _wait_then_clean(child: int, workdir: str, disk_cap: int) -> int:
    """The supervisor's loop: reap orphans until the sandbox ends or the zygote says stop, and
    watch the on-disk workdir (used where there is no size-capped tmpfs): past ``disk_cap`` the
    sandbox is ended. Then kill everything left below us. Returns the sandbox's exit code."""

    def stop(signum, frame):
        raise _Stop

    signal.signal(signal.SIGTERM, stop)
    code, next_check = 1, 0.0
    try:
        while True:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == child:
                code = os.waitstatus_to_exitcode(status)
                code = code if code >= 0 else 128 - code
                break
            if pid:
                continue
            if time.monotonic() >= next_check:
                if cleanup.disk_usage(workdir, disk_cap) > disk_cap:
                    code = protocol.EXIT_DISK
                    break
                next_check = time.monotonic() + 0.5
            time.sleep(0.05)
    except (_Stop, ChildProcessError):
        pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    cleanup.kill_descendants(os.getpid())
    return code


def visible_paths(hidden: list[Path]) -> list[str]:
    """What a sandbox may read besides the system folders: the interpreter, its site folders,
    PYTHONPATH entries and the tensorgrade package; never a folder that holds a ``hidden`` one."""
    import tensorgrade

    paths = {sys.prefix, sys.base_prefix, str(Path(tensorgrade.__file__).parent)}
    paths |= {p for p in sys.path if p and Path(p).name in ("site-packages", "dist-packages")}
    for var in ("PYTHONPATH", "LD_LIBRARY_PATH"):
        paths |= set(settings.search_paths(var))
    # GPU helpers a CUDA client may need to reach: the MPS pipe and the persistence daemon
    paths |= {settings.mps_pipe_directory()}
    paths |= {"/run/nvidia-persistenced", "/var/run/nvidia-persistenced"}
    out = []
    for p in sorted(paths):
        rp = Path(p).resolve()
        if not rp.is_dir() or any(str(rp).startswith(d + "/") for d in ("/usr", "/etc")):
            continue
        if any(rp == h.resolve() or rp in h.resolve().parents for h in hidden):
            continue
        out.append(str(rp))
    return out


def others_can_use(paths: list[str]) -> bool:
    """Whether a uid with no rights of its own can reach and read every path: without a private
    root, the sandbox sees the machine's folders with their own permissions (an interpreter under
    a 0700 /root would not even import)."""
    for p in map(Path, paths):
        try:
            if any(not d.stat().st_mode & 0o001 for d in p.parents):
                return False
            if p.stat().st_mode & 0o005 != 0o005:
                return False
        except OSError:
            return False
    return True


if __name__ == "__main__":
    main()
