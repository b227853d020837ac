"""Cold start: one submission graded as a whole process, by tensorgrade and by otter; and the
cost per submission beyond the student's cells and the tests when many are graded in one batch.

    python bench/cold_start.py [ID] [--repeats 5] [--batch 6]

The two whole-process commands are run in turn, ``--repeats`` times each, so that a machine busy
with other work slows both alike; the table prints their medians and the ratio. The floor for one
submission is one ``import torch`` plus the student's cells plus the tests: measured as a plain
process that imports torch and runs the cells in an IPython shell (figures drawn), plus the
tests' time in tensorgrade's result. Numbers from different machines are not comparable.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tensorgrade import errors
from tensorgrade.cli import options
from tensorgrade.course import find_root, get_assignments


def _run(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


# The floor's first part, measured apart from tensorgrade: a plain process that imports torch and
# runs the student's cells in an IPython shell (as a kernel would), with their figures drawn.
_PLAIN = """
import json, sys
import torch
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
for src in json.load(open(sys.argv[1])):
    shell.run_cell(src)
    if "matplotlib.pyplot" in sys.modules:
        import io
        plt = sys.modules["matplotlib.pyplot"]
        for n in plt.get_fignums():
            plt.figure(n).savefig(io.BytesIO(), format="png", dpi=72)
        plt.close("all")
"""


def _plain_cells(a, solution: Path, work: Path) -> float:
    """Seconds for a fresh process to import torch and run the solution's cells, nothing else."""
    import nbformat

    from tensorgrade.judge.engine import strip_otter

    where = work / "plain"
    if a.student_dir.is_dir():
        shutil.copytree(a.student_dir, where, dirs_exist_ok=True)
    where.mkdir(exist_ok=True)
    nb = nbformat.read(solution, as_version=4)
    cells = [strip_otter(c.source) for c in nb.cells if c.cell_type == "code"]
    (where / "cells.json").write_text(json.dumps(cells))
    (where / "plain.py").write_text(_PLAIN)
    return _run([sys.executable, "plain.py", "cells.json"], where)


def main() -> int:
    ap = options.script_parser(__doc__)
    options.assignment_id(ap, default="01_tensors")
    options.repeats(ap, 5)
    ap.add_argument("--batch", type=int, default=6, help="n: batches of n and 2n are graded")
    args = ap.parse_args()

    root = find_root()
    (a,) = get_assignments(root, [args.id])
    solution = a.autograder_zip.parent / "solution" / a.student.name
    tg = [sys.executable, "-m", "tensorgrade"]
    otter = [str(Path(sys.executable).parent / "otter")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "one").mkdir()
        shutil.copy(solution, work / "one" / a.student.name)
        times: dict[str, list[float]] = {"tensorgrade": [], "otter": [], "torch and cells": []}
        results = {}
        for i in range(args.repeats):
            out = work / f"tg{i}"
            cmd = [*tg, "grade", str(work / "one"), "-a", a.id, "-o", str(out), "-q"]
            times["tensorgrade"].append(_run(cmd, root))
            results = json.loads((out / a.student.stem / "results.json").read_text())
            (work / f"ot{i}").mkdir()
            cmd = [*otter, "run", "-a", str(a.autograder_zip), "-o", str(work / f"ot{i}")]
            times["otter"].append(_run([*cmd, str(work / "one" / a.student.name)], work))
            times["torch and cells"].append(_plain_cells(a, solution, work))
            print(f"round {i + 1}/{args.repeats} done", file=sys.stderr, flush=True)

        med = {k: statistics.median(v) for k, v in times.items()}
        parts = results["extra_data"]["timings"]
        floor = med["torch and cells"] + parts.get("tests", 0)
        print(
            f"\n{a.id}, one submission (the solution) as a whole process; medians of {args.repeats}"
        )
        print(f"  otter run            {med['otter']:6.2f} s")
        print(
            f"  tensorgrade grade    {med['tensorgrade']:6.2f} s   ratio {med['tensorgrade'] / med['otter']:.2f}  (target <= 0.40)"
        )
        print(
            f"  floor                {floor:6.2f} s   ratio {floor / med['otter']:.2f}  = a plain"
            f" process importing torch and running the cells {med['torch and cells']:.2f}"
            f" + tests {parts.get('tests', 0):.2f}"
        )

        # the marginal cost: a batch of 2n less a batch of n, so that what a batch pays once
        # (imports, the zygote, reading the tests) drops out
        walls, own, start, teardown = {}, {}, [], []
        for n in (args.batch, 2 * args.batch):
            many, out = work / f"many{n}", work / f"batch{n}"
            many.mkdir()
            for i in range(n):
                shutil.copy(solution, many / f"student{i:02d}.ipynb")
            cmd = [*tg, "grade", str(many), "-a", a.id, "-o", str(out), "-q", "-j", "1"]
            walls[n] = _run(cmd, root)
            tm = [
                json.loads(p.read_text())["extra_data"]["timings"]
                for p in out.glob("*/results.json")
            ]
            own[n] = sum(t.get("cells", 0) + t.get("tests", 0) for t in tm)
            teardown += [t.get("teardown", 0) for t in tm]
            start += [t.get("startup", 0) for t in tm]
        n = args.batch
        extra = ((walls[2 * n] - own[2 * n]) - (walls[n] - own[n])) / n
        print(
            f"\n{a.id}, batches of {n} and {2 * n} solutions, -j 1: {walls[n]:.2f} s and {walls[2 * n]:.2f} s"
        )
        print(f"  per submission beyond its cells and tests  {extra:6.3f} s  (target <= 0.10)")
        print(f"  of it, sandbox start-up (median)           {statistics.median(start):6.3f} s")
        print(f"  of it, killing the sandbox (median)        {statistics.median(teardown):6.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(errors.run(main))
