"""Spotting timeouts and crashes in a result.

A failed test records its class of failure as data (``TestResult.failure``: ``timed_out``,
``crashed``...). Cells' incidents are described in ``SubmissionResult.reason`` ("cell 7 did not
finish within 60 s", "cell 3 ended the process (...)"), and older results (or the otter engine)
describe tests' incidents only in their ``output`` ("x did not return within 30 s", "not run:
the sandbox failed (...)"); these patterns match that wording (judge/engine.py,
judge/sandbox.py, judge/proxy.py, otter_engine.py); keep them in step when it changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .. import results as R
from ..results import SubmissionResult

TIMED_OUT = re.compile(
    r"did not (return|finish) within|ran out of time|no answer within|timed? ?out", re.I
)
CRASHED = re.compile(
    r"process ended|ended the (process|sandbox)|killed by signal|exited with code|"
    r"sandbox failed|stopped answering|could not start|crash",
    re.I,
)


@dataclass
class Incidents:
    """The lines of one result that tell of a timeout or a crash (each line listed once)."""

    timed_out: list[str] = field(default_factory=list)
    crashed: list[str] = field(default_factory=list)


def incidents(result: SubmissionResult) -> Incidents:
    """Timeout and crash lines from the result's notes and its failed tests' messages.

    A line that mentions both (e.g. "the sandbox failed (no answer within 30 s)") counts as a
    timeout, the cause, not as a crash.
    """
    found = Incidents()
    lines: list[tuple[str, str]] = [("", ln) for ln in result.reason.splitlines()]
    for t in result.tests:
        if t.passed:
            continue
        if t.failure:  # recorded as data: no guessing from the wording
            kind = {R.TIMED_OUT: "timed_out", R.CRASHED: "crashed"}.get(t.failure, "-")
            first = (t.output.strip().splitlines() or [""])[0]
            lines.append((kind, f"{t.name}: {first}"))
        else:
            lines += [("", ln) for ln in t.output.splitlines()]
    for kind, line in lines:
        line = line.strip()
        if kind == "-":
            continue
        if kind:
            bucket = getattr(found, kind)
        elif TIMED_OUT.search(line):
            bucket = found.timed_out
        elif CRASHED.search(line):
            bucket = found.crashed
        else:
            continue
        if line not in bucket:
            bucket.append(line)
    return found
