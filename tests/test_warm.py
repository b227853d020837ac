"""Imports made ahead of need (``judge.warm``): decided from the assignment's own files only, and
really done where they are promised (the zygote's sandboxes start with them)."""

from __future__ import annotations

import json

import pytest

from tensorgrade.course import Assignment
from tensorgrade.judge import warm


def _assignment(tmp_path, master: str, tests: dict[str, str]) -> Assignment:
    a = Assignment("x1_warm", tmp_path)
    a.master.parent.mkdir(parents=True)
    cells = [{"cell_type": "code", "source": master, "metadata": {}, "outputs": []}]
    a.master.write_text(json.dumps({"cells": cells}))
    a.tests_dir.mkdir(parents=True)
    for name, text in tests.items():
        (a.tests_dir / name).write_text(text)
    return a


def test_what_is_imported_ahead_follows_the_assignments_files(tmp_path):
    plain = _assignment(tmp_path / "a", "import torch\nx = torch.ones(3)", {"q1.py": "x = 1"})
    assert warm.sandbox_modules(plain) == [] and warm.judge_modules(plain) == []

    plots = _assignment(tmp_path / "b", "import matplotlib.pyplot as plt", {"q1.py": "x = 1"})
    assert warm.sandbox_modules(plots) == [warm.PYPLOT] and warm.judge_modules(plots) == []

    lends = _assignment(
        tmp_path / "c", "J = torch.func.jacrev(f)(x)", {"q1.py": "f = Portable('rosenbrock')"}
    )
    assert warm.sandbox_modules(lends) == [warm.DYNAMO]
    assert warm.judge_modules(lends) == [warm.DYNAMO]


@pytest.mark.slow  # builds 02
def test_the_real_assignments_warm_what_their_grading_imports(built_course):
    """01 has no torch.func: nobody imports dynamo for it (1.5 s on a cold start for nothing)."""
    a1, a2 = built_course["01_tensors"], built_course["02_autodiff"]
    assert warm.sandbox_modules(a1) == [warm.PYPLOT] and warm.judge_modules(a1) == []
    assert warm.DYNAMO in warm.sandbox_modules(a2) and warm.judge_modules(a2) == [warm.DYNAMO]


def test_a_warming_thread_imports_and_a_second_start_waits_for_the_first():
    import sys

    for m in ("colorsys", "wave"):  # imported again for the test, if anything had imported them
        sys.modules.pop(m, None)
    first = warm.start(["wave", "colorsys"])
    second = warm.start(["colorsys"])  # joined the first: colorsys is imported, nothing to do
    assert second is None and "colorsys" in sys.modules
    assert first is not None and not first.is_alive()
    assert warm.start(["no_such_module_tg"]).join() is None  # a failure is only no head start


@pytest.mark.sandbox
def test_sandboxes_of_a_preloading_zygote_start_with_the_modules(tmp_path):
    """What the zygote preloads is in every sandbox before the first cell (and only then)."""
    from tensorgrade.judge.sandbox import Limits, Sandbox, Zygote

    probe = "import sys\nprint(sorted(m for m in ('colorsys', 'wave') if m in sys.modules))"
    seen = {}
    for preload in (["colorsys", "wave"], []):
        Zygote.configure([], namespaces=False, preload=[])  # a fresh zygote each round
        Zygote.configure([tmp_path], namespaces=False, preload=preload)
        sb = Sandbox(0, Limits())
        try:
            sb.start()
            header, _, _ = sb.request({"op": "run", "id": 1, "source": probe}, 60)
            seen[tuple(preload)] = header["stdout"].strip()
        finally:
            sb.close()
    assert seen == {("colorsys", "wave"): "['colorsys', 'wave']", (): "[]"}
