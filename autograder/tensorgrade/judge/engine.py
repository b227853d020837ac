"""The trusted engine: the student's cells run in a sandbox; tests run here, on proxies."""

from __future__ import annotations

import base64
import inspect
import itertools
import os
import pwd
import re
import secrets
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import cast

from .. import protocol, settings, wire
from ..images import acceptable_png
from ..protocol import LAYERS, weakest
from ..results import (
    CHECK_FAILED,
    CRASHED,
    FAILURES,
    NOT_DEFINED,
    NOT_RUN,
    TIMED_OUT,
    WRONG_TYPE,
    SubmissionResult,
    TestResult,
    not_run,
)
from ..submissions import Ungradable, cell_source, parse_notebook
from ..testfiles import TestSpec
from ..testing import TestFailure
from . import warm as warm_imports
from .proxy import Proxy, SandboxGone, StudentError, evaluation
from .sandbox import Limits, Sandbox, SandboxDied, SandboxTimeout, Spare, Zygote
from .source import definition_source

# Lines otter adds to student notebooks; the trusted engine does not need otter in the sandbox.
_OTTER_LINE = re.compile(
    r"^\s*(# Initialize Otter|import otter|grader\s*=\s*otter\.Notebook\(.*\)|"
    r"grader\.check(_all)?\(.*\)|grader\.export\(.*\))\s*$"
)
_STDOUT_TOTAL = 50_000
_MAX_FIGURES = 8  # per submission; each at most _FIGURE_BYTES of PNG, all at most _FIGURES_TOTAL
_FIGURE_BYTES = 120_000
_FIGURES_TOTAL = 200_000  # characters of base64: results.json stays under its 300 kB cap
_warned_reduced = False


def strip_otter(source: str) -> str:
    return "\n".join("" if _OTTER_LINE.match(ln) else ln for ln in source.splitlines()).strip()


@dataclass
class Session:
    """One submission's sandbox, restartable: a crash replays the cells that ran fine.

    Every wait is bounded by its own limit and by the time left to the submission (``deadline``,
    a ``time.monotonic()`` value), so a submission ends close to its deadline whatever its code
    does. A sandbox that crashes, times out or sends anything but the answer expected is killed
    at once (``give_up``); the next test starts a fresh one (``restart``).
    """

    limits: Limits
    files_from: Path | None
    slot: int
    cells: list[str]
    deadline: float = float("inf")
    sandbox: Sandbox | None = None
    isolation: list[dict] = field(default_factory=list)  # what held, one record per sandbox
    uids: list[int] = field(default_factory=list)
    good_cells: list[str] = field(default_factory=list)
    broken: str = ""  # why the last sandbox was given up ("" while it is usable)
    restarts: int = 0
    gpu_released: list[bool | None] = field(default_factory=list)  # one per sandbox closed
    _tokens: itertools.count = field(default_factory=lambda: itertools.count(1))

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def start(self) -> None:
        left = self.left()
        if left <= 0:
            raise SandboxGone(TIMED_OUT, "the submission ran out of time")
        limits = replace(
            self.limits, startup_timeout=max(0.1, min(self.limits.startup_timeout, left))
        )
        spare = Spare.take(self.slot, limits, self.files_from)
        self.sandbox = spare or Sandbox(self.slot, limits, self.files_from)
        try:
            if spare is not None:
                spare.wait_ready()
            else:
                self.sandbox.start()
        except SandboxTimeout:
            self.close()
            raise SandboxGone(TIMED_OUT, "the sandbox did not start in time") from None
        except (SandboxDied, wire.WireError, protocol.ProtocolError) as e:
            self.close()
            raise SandboxGone(CRASHED, f"the sandbox could not start: {e}") from None
        except BaseException:
            self.close()
            raise
        self.broken = ""
        iso = self.sandbox.isolation
        self.isolation.append(iso.record())
        if iso.uid:
            self.uids.append(iso.sandbox_uid)

    def restart(self) -> None:
        """A fresh sandbox with the good cells replayed, within the deadline. A cell that fails
        when replayed (it crashes or hangs this time) is left out, and the replay starts over."""
        while True:
            self.close()
            self.restarts += 1
            self.start()
            for k, src in enumerate(self.good_cells):
                try:
                    self.ask(
                        {"op": "run", "source": src}, self.limits.cell_timeout, (protocol.Ran,)
                    )
                except SandboxGone:
                    if self.left() <= 0:
                        raise
                    del self.good_cells[k]
                    break
            else:
                return

    def ask(
        self,
        request: dict,
        limit: float,
        expect: tuple[type, ...],
        *,
        lent: dict | None = None,
        portable_type: type | None = None,
    ) -> tuple[object, bytes]:
        """Send one request; its answer, validated, and its tensor bytes.

        Waits at most ``limit`` seconds and never past the deadline. While it waits, the
        sandbox may ask to evaluate functions ``lent`` to it (``protocol.Eval``); the answer
        must repeat the request's random id and be one of ``expect``. Anything else ends the
        sandbox: ``SandboxGone`` says why, in the judge's words.
        """
        if self.sandbox is None:
            raise SandboxGone(CRASHED, self.broken or "the sandbox is gone")
        left = self.left()
        if left <= 0:
            raise SandboxGone(TIMED_OUT, "the submission ran out of time")
        limit = min(limit, left)
        until = time.monotonic() + limit
        rid = secrets.randbits(62)
        sandbox = self.sandbox
        try:
            data, _ = wire.encode({**request, "id": rid}, portable_type)
        except wire.WireError as e:  # the test's own inputs: not the student's doing
            raise TypeError(f"a test input cannot be sent: {e}") from None
        try:
            sandbox.send(data, until)
            while True:
                header, blob = sandbox.receive(until - time.monotonic())
                msg = protocol.parse_answer(header)
                if getattr(msg, "id", None) != rid:
                    raise protocol.ProtocolError("an answer to another request")
                if not isinstance(msg, protocol.Eval):
                    break
                reply, _ = wire.encode(evaluation(msg, blob, lent))
                sandbox.send(reply, until)
        except SandboxTimeout:
            self.give_up(f"no answer within {limit:g} s")
            raise SandboxGone(TIMED_OUT, f"did not finish within {limit:g} s") from None
        except SandboxDied as e:
            self.give_up(str(e))
            raise SandboxGone(CRASHED, str(e)) from None
        except (wire.WireError, protocol.ProtocolError) as e:
            self.give_up(f"a malformed answer ({e})")
            raise SandboxGone(CRASHED, f"it sent a malformed answer ({e})", True) from None
        except BaseException:  # the judge's own failure mid-exchange: the two are out of step
            self.give_up("the exchange was interrupted")
            raise
        if not isinstance(msg, expect):
            self.give_up("an unexpected answer")
            raise SandboxGone(CRASHED, "it sent an answer to another question", True)
        return msg, blob

    def give_up(self, why: str) -> None:
        """Kill the sandbox now: it cannot be trusted to answer the next request in step."""
        self.close()
        self.broken = why

    def new_token(self) -> int:
        return next(self._tokens)

    def close(self) -> None:
        if self.sandbox is not None:
            self.sandbox.close()
            self.gpu_released.append(self.sandbox.gpu_released)
            self.sandbox = None

    def definition_source(self, name: str) -> str | None:
        return definition_source(self.cells, name)


def _wrong_assignment(nb: dict, assignment_id: str) -> str | None:
    for cell in nb["cells"][:5]:
        m = re.search(r'otter\.Notebook\("([\w.-]+)\.ipynb"\)', cell_source(cell))
        if m and m.group(1) != assignment_id:
            return m.group(1)
    return None


def grade(
    nb_bytes: bytes,
    name: str,
    assignment_id: str,
    specs: list[TestSpec],
    *,
    limits: Limits,
    files_from: Path | None = None,
    slot: int = 0,
    forbidden: list[Path] | None = None,
    isolation: str = "full",
    prepare_next: bool = False,
    warm: list[str] | None = None,
) -> SubmissionResult:
    """Grade one notebook: check it, run its cells in a sandbox, run every test here.

    ``prepare_next``: another submission with the same limits follows in this process; its
    sandbox is launched while this one's tests run (``Spare``). ``warm``: modules the tests will
    import lazily, imported here while the cells run (``judge.warm``)."""
    start = time.monotonic()
    result = SubmissionResult(assignment_id, name, "trusted", "graded")
    result.judge_user = _user_name(os.getuid())
    Zygote.configure(list(forbidden or []), namespaces=isolation == "full")

    try:
        nb = _checked_notebook(nb_bytes, name, assignment_id)
    except Ungradable as e:
        return _ungradable(result, specs, str(e), start)

    cells = [strip_otter(cell_source(c)) for c in nb["cells"] if c.get("cell_type") == "code"]
    session = Session(limits, files_from, slot, cells, deadline=start + limits.submission_timeout)
    notes: list[str] = []
    stdout: list[str] = []
    figures: list[dict] = []
    warming = warm_imports.start(warm or [])  # while the sandbox starts and the cells run
    try:
        try:
            session.start()
        except SandboxGone as e:
            return _ungradable(result, specs, e.detail, start)
        _warn_if_reduced(session.isolation[0])
        result.timings["startup"] = round(time.monotonic() - start, 3)
        _run_cells(session, notes, stdout, figures)
        result.timings["cells"] = round(time.monotonic() - start - result.timings["startup"], 3)
        if prepare_next:
            Spare.launch(slot, limits, files_from)
        if warming is not None:
            warming.join()  # the tests may import the same modules: never two threads at once
        result.tests = _run_tests(session, specs)
    finally:
        ended = time.monotonic()
        session.close()  # results are returned (and written) only after the sandbox is dead
        teardown = round(time.monotonic() - ended, 3)
    result.sandbox_uids = sorted(set(session.uids))
    result.isolation = weakest(session.isolation)
    _record_gpu(result, session.gpu_released, notes)
    result.reason = "\n".join(notes)
    result.student_output = "\n".join(stdout)[:_STDOUT_TOTAL]
    result.figures = figures
    result.execution_time = time.monotonic() - start
    if "cells" in result.timings:
        done = sum(result.timings.values()) + teardown
        result.timings["tests"] = round(result.execution_time - done, 3)
        result.timings["teardown"] = teardown  # killing the sandbox and removing its files
    return result


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _record_gpu(result: SubmissionResult, released: list[bool | None], notes: list[str]) -> None:
    """On a GPU machine: which GPU the sandbox had, and whether it gave all its memory back."""
    checked = [r for r in released if r is not None]
    if not checked:
        return
    result.gpu = {
        "device": settings.visible_devices() or "all",
        "memory_released": all(checked),
    }
    if not all(checked):
        notes.append("GPU memory of the sandbox was still held after it was killed")


def _warn_if_reduced(record: dict) -> None:
    """Once per process: which layers are missing here, and why (the system's own words)."""
    global _warned_reduced
    if record.get("level") == "full" or _warned_reduced:
        return
    missing = [k for k in LAYERS if not record.get(k)]
    why = "; ".join(f"{k}: {v}" for k, v in record.get("errors", {}).items())
    print(
        f"WARNING: isolation {record.get('level')}: student code runs without "
        f"{', '.join(missing)} ({why}). Recorded in every result; `tensorgrade doctor` says "
        "what to change.",
        file=sys.stderr,
    )
    _warned_reduced = True


def _checked_notebook(nb_bytes: bytes, name: str, assignment_id: str) -> dict:
    """The parsed notebook, or Ungradable with a reason a student can act on."""
    nb = parse_notebook(nb_bytes, name)
    ks = nb.get("metadata", {}).get("kernelspec")
    if not isinstance(ks, dict) or not ks.get("name"):
        raise Ungradable(
            f"{name} has no kernelspec: open it in Jupyter, choose the Python 3 kernel, save, "
            "and resubmit"
        )
    if "python" not in (str(ks.get("language", "python")) + str(ks.get("name"))).lower():
        raise Ungradable(f"{name} uses the kernel {ks.get('name')!r}, not Python")
    other = _wrong_assignment(nb, assignment_id)
    if other:
        raise Ungradable(f"{name} is the notebook of {other}, not {assignment_id}")
    return nb


def _ungradable(
    result: SubmissionResult, specs: list[TestSpec], why: str, start: float
) -> SubmissionResult:
    result.status, result.reason = "ungradable", why
    result.tests = [not_run(s, why) for s in specs]
    result.execution_time = time.monotonic() - start
    return result


def _run_cells(session: Session, notes: list[str], stdout: list[str], figures: list[dict]) -> None:
    """Run the student's cells; a cell that hangs or kills the process is skipped, not fatal.

    Only what happens here is shown to the student as it is (printed output, figures, errors):
    no hidden input has reached the sandbox yet.
    """
    limits = session.limits
    for i, src in enumerate(session.cells, start=1):
        if not src:
            continue
        left = session.left()
        if left <= 0:
            notes.append(
                f"the submission ran out of time ({limits.submission_timeout:g} s) at cell {i}"
            )
            return
        if session.sandbox is None:
            try:
                session.restart()
            except SandboxGone as e:
                if session.left() > 0:
                    notes.append(f"the sandbox could not be restarted at cell {i} ({e.detail})")
                else:
                    notes.append(
                        f"the submission ran out of time ({limits.submission_timeout:g} s) "
                        f"at cell {i}"
                    )
                return
        try:
            answer, _ = session.ask(
                {"op": "run", "source": src}, limits.cell_timeout, (protocol.Ran,)
            )
            msg = cast(protocol.Ran, answer)  # ask() returns only the types it was told to expect
        except SandboxGone as e:
            if e.failure == TIMED_OUT:
                notes.append(f"cell {i} {e.detail}")
            elif e.malformed:
                notes.append(f"cell {i} broke the sandbox: {e.detail}")
            else:
                notes.append(f"cell {i} ended the process ({e.detail})")
            continue
        if sum(map(len, stdout)) < _STDOUT_TOTAL and msg.stdout:
            stdout.append(f"[cell {i}]\n{msg.stdout}")
        for png in _checked_figures(msg.figures, _MAX_FIGURES - len(figures)):
            if sum(len(f["png"]) for f in figures) + len(png) <= _FIGURES_TOTAL:
                figures.append({"cell": i, "png": png})
        if msg.ok:
            session.good_cells.append(src)
        else:
            notes.append(f"cell {i} raised {msg.error[:300]}")


def _checked_figures(value: object, room: int) -> list[str]:
    """The sandbox's figures that really are PNGs of bounded size (it could send anything)."""
    if not isinstance(value, list):
        return []
    good = []
    for item in value[: max(0, room)]:
        if not isinstance(item, str) or len(item) > _FIGURE_BYTES * 4 // 3 + 4:
            continue
        try:
            raw = base64.b64decode(item, validate=True)
        except ValueError:
            continue
        if acceptable_png(raw):  # a PNG whose declared size a browser can show
            good.append(item)
    return good


def _run_tests(session: Session, specs: list[TestSpec]) -> list[TestResult]:
    """Call every test function here, with proxies for the names the sandbox defines.

    Every public test of every question runs first, then the hidden ones: so all the text a
    student sees (public feedback) is made before the first hidden input reaches the sandbox.
    A failed hidden test says only its class of failure, in a fixed sentence. Results come back
    in the order of ``specs``.
    """
    names = sorted({p for s in specs for p in inspect.signature(s.func).parameters})
    present: dict[str, bool] | None = None
    out: dict[int, TestResult] = {}
    order = [i for i, s in enumerate(specs) if not s.hidden]
    order += [i for i, s in enumerate(specs) if s.hidden]
    for i in order:
        s = specs[i]
        failure, text = _prepare(session)
        if not failure and present is None:
            try:
                answer, _ = session.ask(
                    {"op": "names", "names": names}, session.limits.call_timeout, (protocol.Names,)
                )
                found = cast(protocol.Names, answer).names
                present = {k: v for k, v in found.items() if k in names}
            except SandboxGone as e:
                failure, text = e.failure, f"not run: the sandbox failed ({e.detail})"
        if failure:
            out[i] = not_run(s, FAILURES[failure] if s.hidden else text, failure)
            continue
        out[i] = _run_test(session, s, present or {})
    return [out[i] for i in range(len(specs))]


def _prepare(session: Session) -> tuple[str, str]:
    """("", "") when a sandbox is ready for the next test, else (failure class, why)."""
    limits = session.limits
    if session.left() <= 0:
        return NOT_RUN, "not run: the submission ran out of time"
    if session.sandbox is not None:
        return "", ""
    if session.restarts >= limits.max_restarts:
        return NOT_RUN, f"not run: your code ended the sandbox {session.restarts + 1} times"
    try:
        session.restart()
    except SandboxGone as e:
        if session.left() <= 0:
            return NOT_RUN, "not run: the submission ran out of time"
        return NOT_RUN, f"not run: the sandbox could not be restarted ({e.detail})"
    return "", ""


def _run_test(session: Session, s: TestSpec, present: dict[str, bool]) -> TestResult:
    params = list(inspect.signature(s.func).parameters)
    missing = [p for p in params if p not in present]
    if missing:
        failure, text = NOT_DEFINED, f"your notebook does not define {', '.join(missing)}"
    else:
        try:
            s.func(**{p: Proxy(session, p) for p in params})
            failure, text = "", "passed"
        except Exception as e:  # noqa: BLE001 - any failure of a test is a failed test
            failure, text = _failure(e)
    if failure and s.hidden:
        text = FAILURES[failure]  # nothing the student's code made after seeing hidden inputs
    score = 0.0 if failure else s.points
    return TestResult(s.question, s.name, score, s.points, not failure, text, s.hidden, failure)


def _failure(e: Exception) -> tuple[str, str]:
    """(class of failure, the message a public test shows) for an exception a test raised."""
    if isinstance(e, StudentError):
        return e.failure, str(e)
    if isinstance(e, TestFailure):
        return (e.kind if e.kind in FAILURES else CHECK_FAILED), str(e).strip()[:1500]
    if isinstance(e, AssertionError):
        return CHECK_FAILED, (str(e).strip() or "the check failed")[:1500]
    return WRONG_TYPE, f"{type(e).__name__}: {e}"[:1500]
