"""Which GPUs the judge may hand out, and whether a finished sandbox gave its GPU memory back.

Asked through ``nvidia-smi`` rather than torch: the judge must not create a CUDA context just to
count devices, and a leak check has to see other processes' memory, which only the driver knows.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable

from .. import settings


def visible_gpus() -> list[str]:
    """GPU ids a sandbox can be pinned to: ``CUDA_VISIBLE_DEVICES`` if set, else every GPU the
    driver lists (none on a machine without ``nvidia-smi``)."""
    env = settings.visible_devices()
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    out = _smi(["--query-gpu=index", "--format=csv,noheader"])
    return [line.strip() for line in (out or "").splitlines() if line.strip()]


def gpu_for_slot(slot: int, gpus: list[str]) -> str:
    """Slots go round the GPUs, so N slots per GPU means N submissions per GPU at once."""
    return gpus[slot % len(gpus)]


def compute_pids() -> set[int] | None:
    """Processes that hold GPU memory now, or None where the driver can't be asked."""
    out = _smi(["--query-compute-apps=pid", "--format=csv,noheader"])
    if out is None:
        return None
    return {int(x) for x in out.split() if x.strip().isdigit()}


def memory_released(
    pids: set[int],
    patience: float = 10.0,
    query: Callable[[], set[int] | None] = compute_pids,
) -> bool | None:
    """True once no process of a finished sandbox holds GPU memory; False if one still does after
    ``patience`` seconds (the driver frees a dead process's memory within moments); None when the
    driver can't be asked."""
    deadline = time.monotonic() + patience
    while True:
        holding = query()
        if holding is None:
            return None
        if not holding & pids:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def _smi(args: list[str]) -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None
