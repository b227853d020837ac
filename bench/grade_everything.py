"""Grade the solution, the blank notebook and every mutant of each assignment; print times and
per-question scores; optionally compare with a reference run (e.g. CPU scores on a GPU machine).

    python bench/grade_everything.py [ID ...] [--jobs 4 | --gpu-slots 2] [--isolation reduced]
                                     [--otter-sample] [--out scores.json]
                                     [--reference cpu_scores.json]

Exits 1 if an audit problem is found or a score differs from the reference.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tensorgrade import errors
from tensorgrade.audit import audit, format_report
from tensorgrade.cli import options
from tensorgrade.course import find_root, get_assignments
from tensorgrade.grading import GradeOptions, file_sha256, grade_many
from tensorgrade.mutants import submissions
from tensorgrade.submissions import Submission


def main() -> int:
    ap = options.script_parser(__doc__)
    options.assignment_ids(ap)
    options.jobs(ap, 2)
    ap.add_argument(
        "--otter-sample", action="store_true", help="also otter: 01 solution + 2 mutants"
    )
    options.gpu_slots(ap, "submissions at a time per GPU")
    options.isolation(ap, "as for `tensorgrade grade`")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--reference", type=Path)
    args = ap.parse_args()

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu only"
    print(f"torch {torch.__version__}; device: {dev}", flush=True)
    root = find_root()
    scores: dict[str, dict] = {}
    ok = True
    for a in get_assignments(root, args.ids):
        t0 = time.perf_counter()
        report = audit(a, "trusted", args.jobs, gpu_slots=args.gpu_slots, isolation=args.isolation)
        wall = time.perf_counter() - t0
        print(format_report(report), flush=True)
        times = [r.execution_time for r in report.results.values()]
        print(
            f"  {len(times)} submissions in {wall:.1f} s wall with "
            f"{f'{args.gpu_slots} slots per GPU' if args.gpu_slots else f'{args.jobs} jobs'}; "
            f"per submission median {statistics.median(times):.2f} s, max {max(times):.2f} s"
        )
        ok &= report.ok
        scores[a.id] = {
            n: {
                "questions": r.question_scores(),
                "time": r.execution_time,
                "isolation": r.isolation_level,
                "gpu": r.gpu,
            }
            for n, r in report.results.items()
        }
    if args.otter_sample:
        (a,) = get_assignments(root, ["01_tensors"])
        subs = dict(list(submissions(a).items())[:1] + list(submissions(a).items())[2:4])
        ag = file_sha256(a.autograder_zip)
        with tempfile.TemporaryDirectory() as tmp:
            items = []
            for n, data in subs.items():
                (Path(tmp) / f"{n}.ipynb").write_bytes(data)
                items.append(Submission(n, Path(tmp) / f"{n}.ipynb"))
            opts = GradeOptions(engine="otter", jobs=args.jobs)
            for (_, sub), r in grade_many([(a, s) for s in items], opts, {a.id: ag}):
                same = r.question_scores() == scores.get(a.id, {}).get(sub.key, {}).get("questions")
                print(
                    f"  otter {sub.key}: {r.score:g}/{r.max_score:g} in {r.execution_time:.1f} s "
                    f"({'same as trusted' if same else 'DIFFERS from trusted'})"
                )
                ok &= same
    if args.out:
        args.out.write_text(json.dumps(scores, indent=1))
    if args.reference:
        ref = json.loads(args.reference.read_text())
        diff = [
            f"{aid}/{n}"
            for aid, subs in scores.items()
            for n, r in subs.items()
            if {q: list(v) for q, v in r["questions"].items()}
            != ref.get(aid, {}).get(n, {}).get("questions")
        ]
        n = sum(len(s) for s in scores.values())
        print(
            f"reference comparison: {n - len(diff)} of {n} submissions have equal per-question scores"
        )
        for d in diff:
            print(f"  DIFFERS: {d}")
        ok &= not diff
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(errors.run(main))
