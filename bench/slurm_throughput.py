"""Throughput of `tensorgrade grade --backend slurm` against the local pool, on this machine.

    python bench/slurm_throughput.py [ID] [--count 16] [--per-task 1 8] [--repeats 1]

Starts a private single-node Slurm (tests/slurmcluster.py; as root, Debian's packages), grades
``--count`` of the assignment's examples (solution, blank, mutants spread over the list; 0: all)
through it once per ``--per-task`` value and
once with the local pool (``-j`` = the machine's cores), each into a fresh results folder, and
prints medians: wall time, submissions per minute, and the ratio to the local pool. "per-task
overhead" is the wall time of one array task that has nothing to grade (every result current):
scheduling, interpreter start-up, imports, reading the manifest. The cluster's own start-up time
(nothing running to an idle node) is printed too: it is what the cluster adds to CI. Run it on a
quiet machine; numbers from different machines are not comparable.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import slurmcluster  # noqa: E402

from tensorgrade import errors  # noqa: E402
from tensorgrade.cli import options  # noqa: E402


def _grade(env: dict, subs: Path, out: Path, aid: str, *extra: str) -> float:
    cmd = [sys.executable, "-m", "tensorgrade", "grade", str(subs), "-a", aid, "-o", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run([*cmd, "-q", *extra], cwd=ROOT, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise errors.TensorgradeError(
            f"grading failed ({' '.join(extra)}):\n{proc.stdout}{proc.stderr}"
        )
    return took


def main() -> int:
    ap = options.script_parser(__doc__)
    options.assignment_id(ap, default="01_tensors")
    ap.add_argument("--count", type=int, default=16, help="examples graded (0: all)")
    ap.add_argument("--per-task", type=int, nargs="+", default=[1, 8])
    options.repeats(ap, 1, "graded runs per setting")
    ap.add_argument("--idle-repeats", type=int, default=3, help="runs of the idle task")
    args = ap.parse_args()
    why = slurmcluster.missing()
    if why:
        raise errors.TensorgradeError(why)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="tg-slurm-bench-") as tmp:
        tmp_path = Path(tmp)
        subs = tmp_path / "subs"
        subprocess.run(
            [sys.executable, "-m", "tensorgrade", "examples", args.id, "-o", str(subs)],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        mutants = sorted(subs.glob("mutant-*.ipynb"))
        if args.count:
            keep = set(mutants[:: max(1, -(-len(mutants) // max(1, args.count - 2)))])
            for p in mutants:
                if p not in keep:
                    p.unlink()
        n = len(list(subs.glob("*.ipynb")))
        rows: list[tuple[str, list[float]]] = []
        local = [
            _grade(dict(os.environ), subs, tmp_path / f"local-{i}", args.id, "-j", str(cores))
            for i in range(args.repeats)
        ]
        rows.append((f"local pool, -j {cores}", local))
        cluster = slurmcluster.start()
        starts = [cluster.start_seconds]
        idle: list[float] = []
        try:
            for per_task in args.per_task:
                times = []
                for i in range(args.repeats):
                    out = tmp_path / f"slurm-{per_task}-{i}"
                    times.append(
                        _grade(
                            cluster.env,
                            subs,
                            out,
                            args.id,
                            "--backend",
                            "slurm",
                            "--mem",
                            "1G",
                            "--per-task",
                            str(per_task),
                        )  # fmt: skip
                    )
                tasks = -(-n // per_task)
                rows.append((f"slurm, --per-task {per_task} ({tasks} tasks)", times))
            # one task with nothing left to grade: what a task costs beyond its submissions
            (array,) = sorted((out / ".slurm").glob("*/"))
            for _ in range(args.idle_repeats):
                t0 = time.perf_counter()
                job = cluster.run("sbatch", "--parsable", "--array=0", str(array / "grade.sbatch"))
                while any(j.startswith(f"{job.stdout.strip()}_") for j in cluster.jobs()):
                    time.sleep(0.05)  # (sbatch --wait polls in steps of seconds)
                idle.append(time.perf_counter() - t0)
        finally:
            cluster.stop()
        # a second start, now that the binaries and libraries are in the page cache
        again = slurmcluster.start()
        starts.append(again.start_seconds)
        again.stop()

    base = statistics.median(local)
    print(f"{args.id}: {n} submissions, {cores} cores, median of {args.repeats} run(s)\n")
    print(f"| {'setting':<34} | wall (s) | submissions/min | vs local pool |")
    print(f"|{'-' * 36}|----------|-----------------|---------------|")
    for name, times in rows:
        med = statistics.median(times)
        print(f"| {name:<34} | {med:8.1f} | {60 * n / med:15.1f} | {med / base:12.2f}x |")
    print(
        f"\nper-task overhead (one array task, every result current, sbatch to gone from squeue): "
        f"median {statistics.median(idle):.1f} s of {json.dumps([round(t, 1) for t in idle])}"
    )
    print(f"cluster start (nothing to an idle node): {', '.join(f'{s:.1f} s' for s in starts)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(errors.run(main))
