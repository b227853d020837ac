"""The trusted engine: the student's cells run in a sandbox; tests run here, on proxies."""

from __future__ import annotations

import base64
import inspect
import os
import pwd
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..protocol import LAYERS, weakest
from ..results import SubmissionResult, TestResult, not_run
from ..submissions import Ungradable, cell_source, parse_notebook
from ..testfiles import TestSpec
from .proxy import Proxy, StudentError
from .sandbox import Limits, Sandbox, SandboxDied, SandboxTimeout, Zygote
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
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_warned_reduced = False


def strip_otter(source: str) -> str:
    return "\n".join("" if _OTTER_LINE.match(ln) else ln for ln in source.splitlines()).strip()


@dataclass
class Session:
    """One submission's sandbox, restartable: a crash replays the cells that ran fine."""

    limits: Limits
    files_from: Path | None
    slot: int
    cells: list[str]
    sandbox: Sandbox | None = None
    isolation: list[dict] = field(default_factory=list)  # what held, one record per sandbox
    uids: list[int] = field(default_factory=list)
    good_cells: list[str] = field(default_factory=list)
    restart_needed: str = ""
    restarts: int = 0
    gpu_released: list[bool | None] = field(default_factory=list)  # one per sandbox closed

    def start(self) -> None:
        self.sandbox = Sandbox(self.slot, self.limits, self.files_from)
        try:
            self.sandbox.start()
        except BaseException:
            self.sandbox.close()
            self.sandbox = None
            raise
        iso = self.sandbox.isolation
        self.isolation.append(iso.record())
        if iso.uid:
            self.uids.append(iso.sandbox_uid)

    def restart(self, deadline: float) -> None:
        self.restarts += 1
        self.close()
        self.start()
        for src in self.good_cells:
            self.sandbox.request(
                {"op": "run", "source": src}, max(1.0, deadline - time.monotonic())
            )
        self.restart_needed = ""

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


def _feedback(e: BaseException, hidden: bool) -> str:
    if isinstance(e, StudentError) and hidden:
        return e.brief[:1500]
    if isinstance(e, (AssertionError, StudentError)):
        msg = str(e).strip() or "the check failed"
    else:
        msg = f"{type(e).__name__}: {e}"
    return msg[:1500]


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
) -> SubmissionResult:
    """Grade one notebook: check it, run its cells in a sandbox, run every test here."""
    start = time.monotonic()
    result = SubmissionResult(assignment_id, name, "trusted", "graded")
    result.judge_user = _user_name(os.getuid())
    Zygote.configure(list(forbidden or []), namespaces=isolation == "full")

    try:
        nb = _checked_notebook(nb_bytes, name, assignment_id)
    except Ungradable as e:
        return _ungradable(result, specs, str(e), start)

    cells = [strip_otter(cell_source(c)) for c in nb["cells"] if c.get("cell_type") == "code"]
    deadline = start + limits.submission_timeout
    session = Session(limits, files_from, slot, cells)
    notes: list[str] = []
    stdout: list[str] = []
    figures: list[dict] = []
    try:
        try:
            session.start()
        except (SandboxDied, SandboxTimeout) as e:
            return _ungradable(result, specs, f"the sandbox could not start: {e}", start)
        _warn_if_reduced(session.isolation[0])
        result.timings["startup"] = round(time.monotonic() - start, 3)
        _run_cells(session, deadline, notes, stdout, figures)
        result.timings["cells"] = round(time.monotonic() - start - result.timings["startup"], 3)
        _run_tests(session, specs, deadline, result.tests)
    except (SandboxDied, SandboxTimeout) as e:
        done = {(t.question, t.name) for t in result.tests}
        why = f"not run: the sandbox failed ({e})"
        result.tests += [not_run(s, why) for s in specs if (s.question, s.name) not in done]
    finally:
        session.close()  # results are returned (and written) only after the sandbox is dead
    result.sandbox_uids = sorted(set(session.uids))
    result.isolation = weakest(session.isolation)
    _record_gpu(result, session.gpu_released, notes)
    result.reason = "\n".join(notes)
    result.student_output = "\n".join(stdout)[:_STDOUT_TOTAL]
    result.figures = figures
    result.execution_time = time.monotonic() - start
    if "cells" in result.timings:
        done = sum(result.timings.values())
        result.timings["tests"] = round(result.execution_time - done, 3)
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
        "device": os.environ.get("CUDA_VISIBLE_DEVICES", "all"),
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


def _run_cells(
    session: Session, deadline: float, notes: list[str], stdout: list[str], figures: list[dict]
) -> None:
    """Run the student's cells; a cell that hangs or kills the process is skipped, not fatal."""
    limits = session.limits
    for i, src in enumerate(session.cells, start=1):
        if not src:
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            notes.append(
                f"the submission ran out of time ({limits.submission_timeout:g} s) at cell {i}"
            )
            return
        timeout = min(limits.cell_timeout, left)
        try:
            header, _, _ = session.sandbox.request({"op": "run", "source": src}, timeout)
        except SandboxTimeout:
            notes.append(f"cell {i} did not finish within {timeout:g} s")
            session.restart(deadline)
            continue
        except SandboxDied as e:
            notes.append(f"cell {i} ended the process ({e})")
            session.restart(deadline)
            continue
        if sum(map(len, stdout)) < _STDOUT_TOTAL and header.get("stdout"):
            stdout.append(f"[cell {i}]\n{header['stdout']}")
        for png in _checked_figures(header.get("figures"), _MAX_FIGURES - len(figures)):
            if sum(len(f["png"]) for f in figures) + len(png) <= _FIGURES_TOTAL:
                figures.append({"cell": i, "png": png})
        if header.get("ok"):
            session.good_cells.append(src)
        else:
            notes.append(f"cell {i} raised {str(header.get('error', ''))[:300]}")


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
        if raw.startswith(_PNG_MAGIC):
            good.append(item)
    return good


def _run_tests(
    session: Session, specs: list[TestSpec], deadline: float, out: list[TestResult]
) -> None:
    """Call every test function here, with proxies for the names the sandbox defines."""
    limits = session.limits
    names = sorted({p for s in specs for p in inspect.signature(s.func).parameters})
    header, _, _ = session.sandbox.request({"op": "names", "names": names}, limits.call_timeout)
    present = header.get("names", {}) if isinstance(header.get("names"), dict) else {}
    for s in specs:
        if session.restart_needed and session.restarts >= limits.max_restarts:
            out.append(
                not_run(s, f"not run: your code ended the sandbox {session.restarts + 1} times")
            )
            continue
        if session.restart_needed:
            session.restart(deadline)
        if time.monotonic() > deadline:
            out.append(not_run(s, "not run: the submission ran out of time"))
            continue
        kwargs = {
            p: (Proxy(session, p) if p in present else None)
            for p in inspect.signature(s.func).parameters
        }
        try:
            s.func(**kwargs)
            passed, text = True, "passed"
        except Exception as e:  # noqa: BLE001 - any failure of a test is a failed test
            passed, text = False, _feedback(e, s.hidden)
        score = s.points if passed else 0.0
        out.append(TestResult(s.question, s.name, score, s.points, passed, text, s.hidden))
