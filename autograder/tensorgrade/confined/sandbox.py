"""The sandbox process from its first instruction: confine, then serve the judge.

Forked by the zygote's supervisor with a ``layers.Plan``. Where it is the first process of a fresh
PID namespace it stays as that namespace's init (reaping orphans; from inside the namespace it
cannot be signalled) and runs the student's cells in a child: when the init ends, the kernel kills
every process of the namespace.
"""

from __future__ import annotations

import os

from . import layers, worker

SANDBOX_ENV_FIXED = {
    "LANG": "C.UTF-8",
    "MPLBACKEND": "Agg",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONHASHSEED": "0",
    "NVIDIA_TF32_OVERRIDE": "0",  # full fp32 on Ampere/Hopper: scores must not depend on the GPU
    "USER": "student",
    "LOGNAME": "student",
}


def run(plan: layers.Plan, req_fd: int, resp_fd: int, stdout_cap: int) -> int:
    """Confine this process, then answer requests until the judge says exit; the exit code."""
    isolation, workdir = layers.enter(plan)
    os.environ.update(SANDBOX_ENV_FIXED)
    os.environ.update(HOME=workdir, TMPDIR=os.path.join(workdir, "tmp"))
    os.chdir(workdir)
    if os.getpid() != 1:
        worker.serve(req_fd, resp_fd, isolation, stdout_cap)
        return 0
    child = os.fork()
    if child == 0:
        try:
            worker.serve(req_fd, resp_fd, isolation, stdout_cap)
            os._exit(0)
        except BaseException:  # noqa: BLE001
            os._exit(1)
    os.close(req_fd)
    os.close(resp_fd)
    return _init(child)


def _init(child: int) -> int:
    """Reap every orphan of the namespace until the worker ends; its exit code is ours."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 1
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            return code if code >= 0 else 128 - code
