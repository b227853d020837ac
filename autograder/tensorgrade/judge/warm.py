"""Modules that grading imports lazily, imported ahead of need.

Two imports dominate what is left of a submission's time beyond its own work: torch.func's
pullbacks import ``torch._dynamo`` on first use (about 1.5 s here), in the sandbox when the
student's code uses torch.func and in the judge when it evaluates a function it lent; and the
notebooks import ``matplotlib.pyplot`` (0.4 s, more while its font cache is built in a fresh
home). The zygote imports what the sandboxes will need once, before it forks them, so that no
submission of a batch pays for it again; the judge imports what its tests will need while the
student's cells run, when it would otherwise wait.

What to import is decided from the assignment's own files (the master notebook and the built
tests: trusted), never from a submission: a student must not choose what the grader imports.
"""

from __future__ import annotations

import importlib
import threading
from pathlib import Path
from typing import Any

DYNAMO = "torch._dynamo"
PYPLOT = "matplotlib.pyplot"
_TORCH_FUNC = ("torch.func", "functorch", "Portable(")


def sandbox_modules(a: Any) -> list[str]:
    """What the sandboxes of assignment ``a`` (a ``course.Assignment``) will import lazily, as
    its master notebook shows."""
    text = _read(Path(a.master))
    found = [PYPLOT] if "matplotlib" in text else []
    return found + ([DYNAMO] if any(k in text for k in _TORCH_FUNC) else [])


def judge_modules(a: Any) -> list[str]:
    """What the judge will import lazily while it runs ``a``'s tests: torch._dynamo where the
    tests lend functions (their pullbacks run here) or use torch.func themselves."""
    tests = Path(a.tests_dir)
    text = "".join(_read(p) for p in sorted(tests.glob("*.py"))) if tests.is_dir() else ""
    return [DYNAMO] if any(k in text for k in _TORCH_FUNC) else []


_running: threading.Thread | None = None


def start(modules: list[str]) -> threading.Thread | None:
    """Import ``modules`` in a background thread (None if all are imported already); join it
    before the work that needs them, so that no two threads import the same module at once.
    One still running from an earlier submission (it ended early) is waited for first."""
    import sys

    global _running
    if _running is not None:
        _running.join()
        _running = None
    todo = [m for m in modules if m not in sys.modules]
    if not todo:
        return None
    _running = threading.Thread(
        target=_import_all, args=(todo,), name="tensorgrade-warm", daemon=True
    )
    _running.start()
    return _running


def _import_all(modules: list[str]) -> None:
    for m in modules:
        try:
            importlib.import_module(m)
        except Exception:  # noqa: BLE001 - only a head start: the tests import it again if needed
            pass


def _read(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
