"""Writing a report folder: ``OUT/<submission>.html`` per student and ``OUT/index.html``.

Each page is written atomically, so a killed run leaves whole pages (old or new), never half ones.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from ..results import SubmissionResult, atomic_write_text
from .student import student_report
from .summary import summary_report

SUMMARY = "index.html"
MODE = 0o644  # pages are meant to be read by others (a web server, an LMS upload tool)


def page_names(results: list[SubmissionResult]) -> dict[str, str]:
    """Submission -> file name of its page: safe characters only, unique, never the summary's.

    Submission keys written by `tensorgrade grade` are safe already; a hand-edited results.json
    might not be, and must not be able to write outside OUT or over index.html.
    """
    names: dict[str, str] = {}
    taken = {SUMMARY}
    for r in sorted(results, key=lambda r: r.submission):
        if r.submission in names:
            continue
        stem = re.sub(r"[^A-Za-z0-9._@-]+", "_", r.submission).strip("._")[:100] or "submission"
        name, n = f"{stem}.html", 1
        while name in taken:
            n += 1
            name = f"{stem}-{n}.html"
        taken.add(name)
        names[r.submission] = name
    return names


def write_reports(
    results: list[SubmissionResult],
    out: Path,
    before_publication: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Write every student page, then the summary; returns the paths written (summary last).

    ``progress(done, total)`` is called after each page, for a progress line on big classes.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = page_names(results)
    written = []
    for i, r in enumerate(results, start=1):
        path = out / names[r.submission]
        _write(path, student_report(r, before_publication))
        written.append(path)
        if progress is not None:
            progress(i, len(results))
    index = out / SUMMARY
    _write(index, summary_report(results, names))
    written.append(index)
    return written


def _write(path: Path, text: str) -> None:
    atomic_write_text(path, text)
    path.chmod(MODE)
