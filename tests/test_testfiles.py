"""Test files are read without importing otter, with otter's meaning: the same tests, in the same
order, with the same points and visibility as otter's own reader gives (the scores depend on it)."""

import subprocess
import sys
import textwrap

import pytest
from helpers import ASSIGNMENT_IDS
from otter.test_files.exception_test import ExceptionTestFile

from tensorgrade.testfiles import load_tests


def _otter_view(tests_dir):
    rows = []
    for path in sorted(tests_dir.glob("*.py")):
        tf = ExceptionTestFile.from_file(str(path))
        for i, tc in enumerate(tf.test_cases, start=1):
            rows.append((tf.name, i, tc.body.test_func.__name__, float(tc.points or 0), tc.hidden))
    return sorted(rows)


def _our_view(tests_dir):
    return sorted((s.question, s.index, s.name, s.points, s.hidden) for s in load_tests(tests_dir))


@pytest.mark.slow  # builds every assignment
@pytest.mark.parametrize("aid", ASSIGNMENT_IDS)
def test_every_built_test_file_reads_as_otter_reads_it(aid, built_course):
    tests_dir = built_course[aid].tests_dir
    ours = _our_view(tests_dir)
    assert ours == _otter_view(tests_dir)
    assert sum(p for *_, p, _ in ours) == pytest.approx(100)


def _case(points=None, hidden=False, name="t"):
    args = [] if points is None else [f"points={points!r}"]
    return textwrap.dedent(f"""
        @test_case({", ".join([*args, f"hidden={hidden}"])})
        def test_{name}(f):
            assert f() == 1
    """)


# every rule of otter's point resolution: a question total shared by the tests without points,
# a list of points, points named on some tests, none at all, zeros, and more than the total
POINTS = {
    "total_shared": ("points = 12", [_case(), _case(hidden=True), _case(hidden=True)]),
    "list": ("points = [1, 2.5, 0]", [_case(), _case(), _case(hidden=True)]),
    "some_named_with_total": ("points = 10", [_case(4), _case(), _case()]),
    "some_named_no_total": ("", [_case(2), _case(), _case(0.5)]),
    "none_at_all": ("", [_case(), _case(), _case(), _case()]),
    "only_zeros": ("", [_case(0), _case(), _case()]),
    "no_tests": ("points = 3", []),
}


@pytest.mark.parametrize("kind", sorted(POINTS))
def test_points_resolve_as_otter_resolves_them(kind, tmp_path):
    header, cases = POINTS[kind]
    body = "".join(c.replace("def test_t", f"def test_t{i}") for i, c in enumerate(cases))
    (tmp_path / "q1.py").write_text(
        f"from otter.test_files import test_case\n\nname = 'q1'\n{header}\n{body}"
    )
    assert _our_view(tmp_path) == _otter_view(tmp_path)


@pytest.mark.parametrize("header", ["points = [1, 2, 3]", "points = 1", "points = '3'"])
def test_impossible_points_are_refused_like_otter(header, tmp_path):
    (tmp_path / "q1.py").write_text(
        f"from otter.test_files import test_case\nname = 'q1'\n{header}\n{_case(2)}{_case(name='u')}"
    )
    with pytest.raises((ValueError, TypeError)):
        ExceptionTestFile.from_file(str(tmp_path / "q1.py"))
    with pytest.raises((ValueError, TypeError)):
        load_tests(tmp_path)


def test_reading_tests_imports_no_otter(tmp_path):
    (tmp_path / "q1.py").write_text(
        "from otter.test_files import test_case\nname = 'q1'\npoints = 2\n" + _case()
    )
    code = (
        "import sys; from pathlib import Path; from tensorgrade.testfiles import load_tests; "
        f"(s,) = load_tests(Path({str(tmp_path)!r})); assert s.points == 2 and s.func(lambda: 1) "
        "is None; print(sorted(m for m in sys.modules if m.split('.')[0] == 'otter'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
