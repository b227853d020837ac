"""Grade the same submissions with both engines and print per-submission medians and ratios.

    python bench/compare_engines.py [ID] [--repeats 3] [--mutants 3]

Run on a quiet machine; numbers from different machines are not comparable. "overhead" is the
trusted engine's time beyond running the student's cells: sandbox start-up plus the hidden tests
(judge work and proxy round trips).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from tensorgrade import errors
from tensorgrade.cli import options
from tensorgrade.course import find_root, get_assignments
from tensorgrade.grading import GradeOptions, file_sha256, grade_one
from tensorgrade.mutants import submissions
from tensorgrade.submissions import Submission
from tensorgrade.testfiles import load_tests


def main() -> int:
    ap = options.script_parser(__doc__)
    options.assignment_id(ap, default="01_tensors")
    options.repeats(ap, 3)
    ap.add_argument(
        "--mutants", type=int, default=3, help="how many mutants besides solution/blank"
    )
    args = ap.parse_args()

    (a,) = get_assignments(find_root(), [args.id])
    specs = load_tests(a.tests_dir)
    ag = file_sha256(a.autograder_zip)
    subs = dict(list(submissions(a).items())[: 2 + args.mutants])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in subs.items():
            path = Path(tmp) / f"{name}.ipynb"
            path.write_bytes(data)
            sub = Submission(name, path)
            times: dict[str, list[float]] = {"otter": [], "trusted": []}
            overhead, scores = [], {}
            for _ in range(args.repeats):
                for engine in ("otter", "trusted"):
                    t0 = time.perf_counter()
                    r = grade_one(a, specs, sub, GradeOptions(engine=engine), ag)
                    times[engine].append(time.perf_counter() - t0)
                    scores[engine] = r.score
                    if engine == "trusted":
                        overhead.append(r.timings.get("startup", 0) + r.timings.get("tests", 0))
            rows.append((name, times, overhead, scores))
            print(f"graded {name}", flush=True)

    print(f"\n{a.id}: median seconds per submission over {args.repeats} runs")
    print(f"{'submission':<42}{'otter':>8}{'trusted':>9}{'ratio':>7}{'overhead':>10}  scores")
    ratios, overs = [], []
    for name, times, overhead, scores in rows:
        o, t = statistics.median(times["otter"]), statistics.median(times["trusted"])
        ov = statistics.median(overhead)
        ratios.append(t / o)
        overs.append(ov)
        same = "equal" if abs(scores["otter"] - scores["trusted"]) < 1e-9 else "DIFFER"
        print(f"{name:<42}{o:8.2f}{t:9.2f}{t / o:7.2f}{ov:10.2f}  {scores['trusted']:g} ({same})")
    print(
        f"{'median':<42}{'':8}{'':9}{statistics.median(ratios):7.2f}{statistics.median(overs):10.2f}"
    )
    print("targets: ratio <= 0.5, overhead < 1.5 s")
    return 0


if __name__ == "__main__":
    raise SystemExit(errors.run(main))
