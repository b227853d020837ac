"""Catch rate of the hidden tests on a held-out set of plausible student mistakes.

    python bench/heldout_catch_rate.py [ID ...] [--heldout DIR] [-j 1] [--isolation full|reduced]

``DIR/<id>.yml`` (default ``bench/heldout/``) lists mistakes in the format of ``mutants.yml``
(name, description, loses, code); each replaces one cell of the built solution. Every mistake is
graded with the trusted engine, like ``tensorgrade audit`` grades mutants; it is *caught* when it
loses points on some question (and *on target* when one of those is a question it names). The
solution is graded too, as a control: a measurement where it does not get full marks is invalid.

Only question names and scores are printed, never the hidden tests' names or messages, so that
whoever writes the held-out set can stay blind to the tests. The set in bench/heldout/ was written
on 2026-11-30 from the student notebooks alone (86 mistakes); it measured the hidden tests before
and after one strengthening pass and is no longer held out for anyone who has read it: a later
pass should be measured with a new set, written the same way. Exits 1 when the control fails or a
mistake cannot be applied.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from tensorgrade import errors, notebooks
from tensorgrade.audit import grade_submissions, lost_questions
from tensorgrade.cli import options
from tensorgrade.course import find_root, get_assignments
from tensorgrade.grading import GradeOptions
from tensorgrade.mutants import MutantError, apply_mutant, load_mutants

CONTROL = "control-solution"


def _questions(lost: set[str]) -> str:
    return ",".join(sorted(lost, key=lambda q: (len(q), q))) or "-"


def measure(a, heldout: Path, opts: GradeOptions) -> tuple[int, int, list[float], bool]:
    """Grade one assignment's held-out mistakes; print the table. Returns (caught, total, seconds
    per submission, ok)."""
    path = heldout / f"{a.id}.yml"
    print(f"== {a.id}  ({path})")
    if not path.is_file():
        print("   no held-out file: skipped")
        return 0, 0, [], True
    mistakes = load_mutants(path)
    solution = notebooks.read(a.solution)
    subs = {CONTROL: notebooks.dumps(solution).encode()}
    ok = True
    for m in mistakes:
        try:
            subs[m.name] = notebooks.dumps(apply_mutant(solution, m)).encode()
        except MutantError as e:
            print(f"   NOT APPLIED {m.name}: {e}")
            ok = False
    t0 = time.perf_counter()
    results = grade_submissions(a, subs, opts)
    wall = time.perf_counter() - t0
    seconds = [r.execution_time for r in results.values()]

    control = results[CONTROL]
    if control.status != "graded" or control.score < control.max_score - 1e-9:
        print(
            f"   CONTROL FAILED: the solution scores {control.score:g}/{control.max_score:g} "
            f"(status {control.status}); the numbers below are not a measurement"
        )
        ok = False

    caught, survivors = 0, []
    print(f"   {'mistake':<44} {'names':<8} {'score':>13}  {'lost on':<14} verdict")
    for m in mistakes:
        if m.name not in results:
            continue
        r = results[m.name]
        lost = lost_questions(r)
        named = ",".join(m.loses)
        score = f"{r.score:6.2f}/{r.max_score:g}"
        if lost:
            caught += 1
            verdict = "caught" if set(m.loses) & lost else "caught, not on the named question"
        else:
            verdict = "SURVIVES"
            survivors.append(m)
        if r.status != "graded":
            verdict += f" (status {r.status})"
        print(f"   {m.name:<44} {named:<8} {score:>13}  {_questions(lost):<14} {verdict}")

    total = len([m for m in mistakes if m.name in results])
    pct = 100.0 * caught / total if total else 0.0
    print(f"   caught {caught}/{total} = {pct:.1f}%")
    by_q: dict[str, list[int]] = {}
    for m in mistakes:
        if m.name in results:
            for q in m.loses:
                c = by_q.setdefault(q, [0, 0])
                c[1] += 1
                c[0] += bool(lost_questions(results[m.name]))
    print("   per named question: " + ", ".join(f"{q} {c}/{t}" for q, (c, t) in by_q.items()))
    if survivors:
        print("   survivors:")
        for m in survivors:
            print(f"     - {m.name} [{','.join(m.loses)}]: {m.description}")
    med = statistics.median(seconds) if seconds else 0.0
    print(
        f"   median {med:.1f} s per submission ({len(subs)} graded, control included; "
        f"{wall:.0f} s wall with -j {opts.jobs})"
    )
    return caught, total, seconds, ok


def main() -> int:
    ap = options.script_parser(__doc__)
    options.assignment_ids(ap)
    ap.add_argument("--heldout", type=Path, default=None, help="folder of <id>.yml (bench/heldout)")
    options.jobs(ap, 1, "grading processes")
    options.isolation(ap, "the sandbox's isolation")
    args = ap.parse_args()

    root = find_root()
    heldout = args.heldout or root / "bench" / "heldout"
    opts = GradeOptions(engine="trusted", jobs=args.jobs, progress=False, isolation=args.isolation)
    caught = total = 0
    seconds: list[float] = []
    ok = True
    for a in get_assignments(root, args.ids or None):
        c, t, s, good = measure(a, heldout, opts)
        caught, total, ok = caught + c, total + t, ok and good
        seconds += s
        print()
    if total:
        med = statistics.median(seconds)
        print(
            f"ALL: caught {caught}/{total} = {100.0 * caught / total:.1f}% "
            f"(target >= 90%); median {med:.1f} s per submission"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(errors.run(main))
