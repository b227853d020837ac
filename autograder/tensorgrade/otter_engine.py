"""The baseline engine: otter's own runner on the built autograder bundle.

Kept as the comparison point for the trusted engine. It inherits otter's weaknesses (hidden tests
run inside the student's kernel), so its scores are only as honest as the submission.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import settings
from .results import SubmissionResult, TestResult, not_run
from .submissions import Ungradable, parse_notebook
from .testfiles import TestSpec

_CASE = re.compile(r"^\s*(?P<q>\S+) - (?P<k>\d+) result:\s*\n\s*(?P<mark>✅|❌)", re.M)


def grade(
    nb_bytes: bytes,
    name: str,
    autograder_zip: Path,
    specs: list[TestSpec],
    *,
    timeout: float = 900.0,
) -> SubmissionResult:
    """Grade one notebook with `otter run`; per-test outcomes are read from otter's feedback."""
    start = time.monotonic()
    result = SubmissionResult(assignment="", submission=name, engine="otter", status="graded")
    try:
        parse_notebook(nb_bytes, name)
        otter_json = _run_otter(nb_bytes, autograder_zip, timeout)
    except Ungradable as e:
        result.status, result.reason = "ungradable", str(e)
        result.tests = [not_run(s, str(e)) for s in specs]
        result.execution_time = time.monotonic() - start
        return result
    result.tests = _per_test(otter_json, specs)
    result.execution_time = time.monotonic() - start
    return result


def _run_otter(nb_bytes: bytes, autograder_zip: Path, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="tg-otter-") as tmp:
        sub = Path(tmp) / "submission.ipynb"
        sub.write_bytes(nb_bytes)
        out = Path(tmp) / "out"
        out.mkdir()
        cmd = [sys.executable, "-m", "otter", "run", "--no-logo", "-a", str(autograder_zip)]
        # one CPU thread per kernel, as for the trusted engine's sandboxes: with --jobs N, N
        # kernels that each use every core fight over them (twice the CPU time measured on 02)
        threads = settings.threads()
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        try:
            proc = subprocess.run(
                [*cmd, "-o", str(out), str(sub)],
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=tmp,
                env=env,
            )
        except subprocess.TimeoutExpired:
            raise Ungradable(f"otter run did not finish within {timeout:.0f} s") from None
        results = out / "results.json"
        if not results.is_file():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
            raise Ungradable(f"otter run produced no results (exit {proc.returncode}): {tail}")
        return json.loads(results.read_text())


def _per_test(otter_json: dict, specs: list[TestSpec]) -> list[TestResult]:
    """Map otter's per-question feedback onto our per-test records."""
    by_q = {t["name"]: t for t in otter_json.get("tests", []) if t.get("name") != "Public Tests"}
    out = []
    for s in specs:
        entry = by_q.get(s.question)
        text = entry.get("output", "") if entry else ""
        passed = None
        for m in _CASE.finditer(text):
            if m["q"] == s.question and int(m["k"]) == s.index:
                passed = m["mark"] == "✅"
        if passed is None and entry and "All test cases passed" in text:
            passed = True
        out.append(
            TestResult(
                question=s.question,
                name=s.name,
                score=s.points if passed else 0.0,
                max_score=s.points,
                passed=bool(passed),
                # otter's failure text quotes the test's source: never show it for hidden tests
                output="passed" if passed else ("failed" if s.hidden else _case_output(text, s)),
                hidden=s.hidden,
            )
        )
    return out


def _case_output(text: str, s: TestSpec) -> str:
    marker = f"{s.question} - {s.index} result:"
    i = text.find(marker)
    if i < 0:
        return ""
    rest = text[i + len(marker) :]
    j = rest.find(" result:\n")
    block = rest if j < 0 else rest[: rest.rfind("\n", 0, j)]
    return block.strip()[:2000]
