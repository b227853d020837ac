"""Ending a sandbox: kill exactly its processes, then remove what it left on disk.

Processes are found by descent from the sandbox's supervisor (a child subreaper: every orphan of
the sandbox is re-parented to it), never by uid: another grader on the same machine may be using
the same uid. Files are removed without recursion and without following symlinks, however deep
the tree a student made.
"""

from __future__ import annotations

import os
import signal
import stat
import time


def children_map() -> dict[int, list[int]]:
    """Parent pid -> child pids, for every process visible in /proc."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (not ``pid`` itself)."""
    kids, out, todo = children_map(), [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def kill_descendants(pid: int, patience: float = 20.0) -> None:
    """SIGKILL everything below ``pid`` until nothing is left (a fork bomb may race for a while).

    Only the subreaper itself calls this, for its own tree, and reaps as it goes.
    """
    deadline = time.monotonic() + patience
    while True:
        found = descendants(pid)
        for p in found:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        _reap_all()
        if not found or time.monotonic() > deadline:
            return
        _await_exit(0.02)


def _await_exit(most: float) -> None:
    """Wait until a child of ours ends (and reap it), or ``most`` seconds: killed processes take
    a few milliseconds to go (a torch process unmaps gigabytes), rarely the whole wait."""
    deadline = time.monotonic() + most
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid:
            _reap_all()
            return
        time.sleep(0.001)


def _reap_all() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def remove_tree(path: str) -> bool:
    """Remove ``path`` and everything in it, iteratively, through directory file descriptors
    (a tree thousands of levels deep has paths longer than PATH_MAX). Symlinks are removed, never
    followed. Returns whether everything went."""
    try:
        cur = _open_dir(path, None)
    except OSError:
        return not os.path.lexists(path)
    names: list[str] = []
    ok = True
    while True:
        sub = None
        try:
            with os.scandir(cur) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        sub = e.name
                        break
                    try:
                        os.unlink(e.name, dir_fd=cur)
                    except OSError:
                        ok = False
        except OSError:
            ok = False
        if sub is not None:
            try:
                child = _open_dir(sub, cur)
            except OSError:
                ok = False
                try:
                    os.rmdir(sub, dir_fd=cur)
                except OSError:
                    pass
                sub = None
            else:
                os.close(cur)
                cur = child
                names.append(sub)
                continue
        if not names:
            os.close(cur)
            break
        parent = os.open("..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=cur)
        os.close(cur)
        cur = parent
        try:
            os.rmdir(names.pop(), dir_fd=cur)
        except OSError:
            ok = False
            # a directory that will not go (unlikely once its files are gone): stop descending
            # into it again by giving up on this tree
            os.close(cur)
            break
    try:
        os.rmdir(path)
    except OSError:
        ok = False
    return ok and not os.path.lexists(path)


def _open_dir(name: str, dir_fd: int | None) -> int:
    """Open a directory the sandbox may have made unreadable (mode 000), giving it back u+rwx."""
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(name)
    if st.st_mode & 0o700 != 0o700:  # without root, listing and emptying need u+rwx
        try:
            os.chmod(name, 0o700, dir_fd=dir_fd)
        except OSError:
            pass
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)


def disk_usage(path: str, stop_at: int) -> int:
    """Bytes a folder's files take on disk, counted without recursion and without following
    symlinks, however deep; stops counting once past ``stop_at``. The sandbox may be writing
    while we count, so the walk climbs back with ``..`` only after checking it is where it came
    from, and gives up (returning what it counted) when the tree moved under it."""
    try:
        cur = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return 0
    total = 0
    # per level: the folder's identity and the names of its sub-folders still to visit
    stack: list[tuple[tuple[int, int], list[str]]] = []
    try:
        while True:  # here ``cur`` is a folder not yet counted
            st = os.fstat(cur)
            subdirs = []
            try:
                with os.scandir(cur) as it:
                    for e in it:
                        try:
                            s = e.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        total += s.st_blocks * 512
                        if stat.S_ISDIR(s.st_mode):
                            subdirs.append(e.name)
            except OSError:
                pass
            if total > stop_at:
                return total
            stack.append(((st.st_dev, st.st_ino), subdirs))
            child = None
            while child is None:
                while not stack[-1][1]:  # this folder is done: climb back to its parent
                    stack.pop()
                    if not stack:
                        return total
                    parent = os.open("..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=cur)
                    os.close(cur)
                    cur = parent
                    pst = os.fstat(cur)
                    if (pst.st_dev, pst.st_ino) != stack[-1][0]:
                        return total  # the tree moved while we walked it
                name = stack[-1][1].pop()
                try:
                    child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=cur)
                except OSError:
                    child = None
            os.close(cur)
            cur = child
    finally:
        os.close(cur)
