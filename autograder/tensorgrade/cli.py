"""The `tensorgrade` command: build assignments, grade submissions."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from . import __version__
from .errors import UsageError as _UsageError


def _assignments(ids: list[str] | None):
    """The course root and the named assignments (all when none are named)."""
    from .course import find_root, get_assignments

    root = find_root()
    try:
        return root, get_assignments(root, ids)
    except KeyError as e:
        raise _UsageError(e.args[0]) from None


def _build(args: argparse.Namespace) -> int:
    from .build import BuildError, build_one, stale_files, write_student
    from .gradescope import write_gradescope_zip

    root, assignments = _assignments(args.ids)
    if not assignments:
        print(f"error: no master notebooks under {root / 'solutions'}", file=sys.stderr)
        return 2
    stale_all = []
    for a in assignments:
        t0 = time.monotonic()
        try:
            built = build_one(a, write_dist=not args.check)
        except BuildError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        if args.check:
            stale = stale_files(built)
            stale_all += stale
            state = "stale" if stale else "up to date"
            print(f"{a.id}: {state} ({time.monotonic() - t0:.1f} s)")
        else:
            written = write_student(built)
            write_gradescope_zip(a)  # after the student files: the zip ships their data files
            what = f"wrote {len(written)} student file(s)" if written else "student files unchanged"
            print(
                f"{a.id}: {what}; dist/{a.id}/ ready, gradescope.zip included "
                f"({time.monotonic() - t0:.1f} s)"
            )
    if stale_all:
        for p in stale_all:
            print(f"stale: {p.relative_to(root)}", file=sys.stderr)
        print("run `tensorgrade build` and commit the student notebooks", file=sys.stderr)
        return 1
    return 0


def _grade(args: argparse.Namespace) -> int:
    from .course import find_root
    from .grading import GradeOptions, GradingError, grade_batch, is_internal_error

    if args.gpu_slots < 0 or args.jobs < 1:
        raise _UsageError("--jobs must be at least 1 and --gpu-slots at least 0")
    if (args.gpu_slots or args.judge_user) and args.engine != "trusted":
        raise _UsageError("--gpu-slots and --judge-user need the trusted engine")
    root = find_root()
    opts = GradeOptions(
        engine=args.engine,
        jobs=args.jobs,
        timeout=args.timeout,
        force=args.force,
        progress=not args.quiet,
        isolation=args.isolation,
        gpu_slots=args.gpu_slots,
        judge_user=args.judge_user,
    )
    slurm_only = [o for o, v in _slurm_given(args).items() if v]
    if args.backend != "slurm" and slurm_only:
        raise _UsageError(f"{', '.join(slurm_only)} need(s) --backend slurm")
    try:
        if args.backend == "slurm":
            from .slurm import task_end

            batch = _grade_slurm(root, args, opts)
            if batch.results is None:  # submitted without waiting, or a dry run
                return 0
            results = batch.results
        else:
            results = grade_batch(root, args.paths, args.output, opts, args.assignment)
    except (FileNotFoundError, KeyError, GradingError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    width = max(len(r.submission) for r in results)
    for r in results:
        line = f"{r.submission:<{width}}  {r.score:6.2f} / {r.max_score:g}  {r.status}"
        if r.status != "graded":
            line += f": {r.reason.splitlines()[0] if r.reason else ''}"
        print(line)
    print(f"results in {args.output}/ (grades.csv, <submission>/results.json)")
    failed = [r.submission for r in results if is_internal_error(r)]
    if failed:  # everything is written; the status tells a script that staff must look
        print(
            f"error: internal error of the grader on {len(failed)} submission(s) "
            f"({', '.join(failed[:10])}{', ...' if len(failed) > 10 else ''}): tracebacks "
            "above; they are regraded on the next run",
            file=sys.stderr,
        )
        return 3
    if args.backend == "slurm":
        lost = [r.submission for r in results if task_end(r) is not None]
        if lost:
            print(
                f"error: {len(lost)} submission(s) not graded because their Slurm task ended "
                f"first ({', '.join(lost[:10])}{', ...' if len(lost) > 10 else ''}): their "
                "reasons say how; run the same command again to grade them",
                file=sys.stderr,
            )
            return 3
    return 0


def _slurm_given(args: argparse.Namespace) -> dict[str, bool]:
    """Which Slurm-only options the command line set (they need --backend slurm)."""
    return {
        "--per-task": args.per_task is not None,
        "--cpus-per-task": args.cpus_per_task is not None,
        "--mem": bool(args.mem),
        "--time": bool(args.time),
        "--partition": bool(args.partition),
        "--account": bool(args.account),
        "--sbatch": bool(args.sbatch),
        "--task-wrapper": bool(args.task_wrapper),
        "--no-wait": args.no_wait,
        "--dry-run": args.dry_run,
    }


def _grade_slurm(root: Path, args: argparse.Namespace, opts):
    from .slurm import DEFAULT_PER_TASK, SlurmOptions, grade_slurm

    if (args.per_task is not None and args.per_task < 1) or (
        args.cpus_per_task is not None and args.cpus_per_task < 1
    ):
        raise _UsageError("--per-task and --cpus-per-task must be at least 1")
    sopts = SlurmOptions(
        per_task=DEFAULT_PER_TASK if args.per_task is None else args.per_task,
        cpus_per_task=args.cpus_per_task or 0,
        mem=args.mem,
        time=args.time,
        partition=args.partition,
        account=args.account,
        sbatch=list(args.sbatch),
        wrapper=shlex.split(args.task_wrapper),
        wait=not args.no_wait,
        dry_run=args.dry_run,
    )
    return grade_slurm(root, args.paths, args.output, opts, sopts, args.assignment)


def _audit(args: argparse.Namespace) -> int:
    from .audit import audit, format_report

    _, assignments = _assignments(args.ids)
    ok = True
    for a in assignments:
        if not a.autograder_zip.is_file():
            print(f"error: {a.id} is not built: run `tensorgrade build {a.id}`", file=sys.stderr)
            return 2
        print(f"{a.id}: grading solution, blank notebook and mutants ...", file=sys.stderr)
        report = audit(a, engine=args.engine, jobs=args.jobs)
        print(format_report(report))
        ok &= report.ok
    return 0 if ok else 1


def _release(args: argparse.Namespace) -> int:
    from .build import BuildError
    from .release import ReleaseError, make_release, output_path, write_folder, write_release_zip

    root, assignments = _assignments(args.ids)
    output_path(args.output, root, args.zip)  # refuse a wrong OUTPUT before building anything
    try:
        release = make_release(root, assignments, title=args.title)
    except (BuildError, ReleaseError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    write = write_release_zip if args.zip else write_folder
    out = write(release, args.output, root)
    for note in release.notes:
        print(f"note: {note}", file=sys.stderr)
    print(
        f"wrote the student release of {', '.join(release.assignments)} to {out} "
        f"({len(release.files)} files, no solutions, no hidden tests): publish it as the "
        "students' repository (see docs/release.md)"
    )
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from .judge.doctor import main as doctor

    return doctor(args.json, args.isolation)


def _examples(args: argparse.Namespace) -> int:
    from .mutants import submissions

    _, (a,) = _assignments([args.id])
    if not a.solution.is_file():
        print(f"error: {a.id} is not built: run `tensorgrade build {a.id}`", file=sys.stderr)
        return 2
    args.output.mkdir(parents=True, exist_ok=True)
    subs = submissions(a)
    for name, data in subs.items():
        (args.output / f"{name}.ipynb").write_bytes(data)
    print(f"wrote {len(subs)} example submissions for {a.id} to {args.output}/")
    return 0


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tensorgrade",
        description="Build the student notebooks of a PyTorch course and grade submissions.",
        epilog="Run `tensorgrade COMMAND --help` for the options of each command.",
    )
    p.add_argument("--version", action="version", version=f"tensorgrade {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    b = sub.add_parser(
        "build",
        help="make student notebooks and autograder bundles from the masters",
        description=(
            "Run otter assign on each master notebook solutions/<id>/<id>.ipynb. Writes the "
            "student notebook to assignments/<id>/ (commit it) and the solution notebook, test "
            "files, autograder.zip and gradescope.zip (upload it to Gradescope; it holds the "
            "hidden tests) to dist/<id>/ (build output, not committed). Builds are "
            "byte-identical when nothing changed."
        ),
    )
    b.add_argument("ids", nargs="*", metavar="ID", help="assignment ids (default: all)")
    b.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 and name the files if committed student notebooks are stale",
    )
    b.set_defaults(func=_build)

    g = sub.add_parser(
        "grade",
        help="grade submitted notebooks",
        description=(
            "Grade notebooks (files, or folders searched recursively) against the built "
            "autograder. Writes OUTPUT/<submission>/results.json (Gradescope format) and "
            "OUTPUT/grades.csv. Submissions already graded with the same content and autograder "
            "are not regraded, so an interrupted batch can simply be run again. A submission "
            "the grader itself failed on is recorded as ungradable (internal error, traceback "
            "on stderr) and the batch goes on; the exit status is then 3."
        ),
    )
    g.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="notebook or folder")
    g.add_argument("-a", "--assignment", metavar="ID", help="assignment id (default: inferred)")
    g.add_argument("-o", "--output", type=Path, default=Path("results"), help="default: results/")
    g.add_argument(
        "--engine",
        choices=["trusted", "otter"],
        default="trusted",
        help=(
            "trusted (default): student code runs in a sandbox, hidden tests in this process; "
            "otter: otter's own runner (hidden tests run in the student's kernel; a comparison "
            "point only)"
        ),
    )
    g.add_argument("-j", "--jobs", type=int, default=1, help="submissions graded at once")
    g.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="otter engine: seconds per submission (default 900); the trusted engine takes its "
        "limits from solutions/<id>/grading.yml",
    )
    g.add_argument("--force", action="store_true", help="regrade even if a result is up to date")
    g.add_argument(
        "--isolation",
        choices=["full", "reduced"],
        default="full",
        help="trusted engine: full (default: every layer this machine gives, see `tensorgrade "
        "doctor`) or reduced (no namespaces or private root, still its own uid, Landlock and "
        "seccomp: only where namespaces break the GPU); recorded in every result",
    )
    g.add_argument(
        "--gpu-slots",
        type=int,
        default=0,
        metavar="N",
        help="trusted engine on a GPU machine: grade N submissions at a time per GPU, each "
        "sandbox seeing only its own GPU (CUDA_VISIBLE_DEVICES), and check after each that its "
        "GPU memory was given back; replaces --jobs",
    )
    g.add_argument(
        "--judge-user",
        metavar="USER",
        default="",
        help="trusted engine, as root: evaluate hidden tests and decode the sandboxes' answers as "
        "this unprivileged user (the grading image's 'judge'); only the sandbox starter keeps "
        "root, to give each sandbox its own uid",
    )
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    g.add_argument(
        "--backend",
        choices=["local", "slurm"],
        default="local",
        help="local (default): a process pool on this machine; slurm: a Slurm job array over "
        "the submissions that need grading (see docs/slurm.md); OUTPUT must be on storage the "
        "cluster's nodes share",
    )
    sl = g.add_argument_group("Slurm backend (--backend slurm)")
    sl.add_argument(
        "--per-task",
        type=int,
        metavar="N",
        help="submissions graded by one array task, one after another (default 8): one task "
        "start-up serves them all",
    )
    sl.add_argument(
        "--cpus-per-task",
        type=int,
        metavar="N",
        help="default: one per submission graded at once (--jobs, or --gpu-slots)",
    )
    sl.add_argument(
        "--mem",
        default="",
        help="memory per task, as sbatch writes it (default: the assignment's memory limit per "
        "submission graded at once, plus 2 GiB for the judge)",
    )
    sl.add_argument(
        "--time",
        default="",
        help="time limit per task, as sbatch writes it (default: --per-task times the "
        "assignment's submission_timeout and startup_timeout, plus 5 minutes)",
    )
    sl.add_argument("--partition", default="", help="Slurm partition")
    sl.add_argument("--account", default="", help="Slurm account")
    sl.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="OPTION",
        help="another sbatch option for the batch script, e.g. --sbatch=--qos=short (repeat it)",
    )
    sl.add_argument(
        "--task-wrapper",
        default="",
        metavar="CMD",
        help="run each task's interpreter under this command, e.g. 'apptainer exec --nv -B "
        "/scratch grading.sif' (the grading image under the cluster's container runtime)",
    )
    sl.add_argument(
        "--no-wait",
        action="store_true",
        help="submit and leave; running the same command again waits, or resubmits what is "
        "missing, and writes grades.csv",
    )
    sl.add_argument(
        "--dry-run",
        action="store_true",
        help="print the batch script and the array that would be submitted; write nothing",
    )
    g.set_defaults(func=_grade)

    au = sub.add_parser(
        "audit",
        help="check that the tests of an assignment grade what they should",
        description=(
            "Grade the solution (must score full marks), the blank student notebook (must score "
            "0) and every mutant in solutions/<id>/mutants.yml (must lose points on exactly the "
            "questions it names); report hidden tests that no mutant fails. Exit 1 on a problem."
        ),
    )
    au.add_argument("ids", nargs="*", metavar="ID", help="assignment ids (default: all)")
    au.add_argument("--engine", choices=["trusted", "otter"], default="trusted")
    au.add_argument("-j", "--jobs", type=int, default=2, help="submissions graded at once")
    au.set_defaults(func=_audit)

    ex = sub.add_parser(
        "examples",
        help="write example submissions (solution, blank, mutants) to try the grader on",
        description=(
            "Write the built solution, the untouched student notebook and one notebook per "
            "mutant in solutions/<id>/mutants.yml to OUTPUT, named solution.ipynb, blank.ipynb "
            "and mutant-<name>.ipynb. Contains solutions: keep it away from students."
        ),
    )
    ex.add_argument("id", metavar="ID", help="assignment id")
    ex.add_argument("-o", "--output", type=Path, required=True, help="folder to write to")
    ex.set_defaults(func=_examples)

    rl = sub.add_parser(
        "release",
        help="make the course as students receive it (notebooks, helpers, install files)",
        description=(
            "Write what students get, to publish as its own repository (or a zip): the student "
            "notebooks and their data (assignments/), the modules of tensorgrade that public "
            "checks import (tensorgrade.testing, tensorgrade.portable) as the installable "
            "package tensorgrade-student, requirements.txt, student_env.yml and a README with "
            "the pip, conda and Colab routes. No master, solution, hidden test or grader code: "
            "the release is searched for every solution line and hidden test of the masters "
            "before it is written. Refuses stale student notebooks (run `tensorgrade build` "
            "first). OUTPUT must be new, empty, hold only .git, or hold an earlier release "
            "(then everything but .git is replaced)."
        ),
    )
    rl.add_argument("ids", nargs="*", metavar="ID", help="assignment ids (default: all)")
    rl.add_argument("-o", "--output", type=Path, required=True, help="folder (or zip) to write")
    rl.add_argument(
        "--zip",
        action="store_true",
        help="write OUTPUT as a zip file (.zip added if missing), its files in one folder",
    )
    rl.add_argument("--title", default="Course notebooks", help="heading of the students' README")
    rl.set_defaults(func=_release)

    dr = sub.add_parser(
        "doctor",
        help="show which sandbox isolation layers this machine gives, and what to change",
        description=(
            "Start one sandbox exactly as grading does, list every isolation layer (own uid, "
            "network/mount/PID/IPC namespaces, Landlock, seccomp) as it held, with the system's "
            "error and a fix for each missing one, then try from inside what a student would "
            "(network, a grader's file, the grader's environment, the grader's processes, CUDA). "
            "Exit status 0 when every attempt was stopped, 1 otherwise."
        ),
    )
    dr.add_argument("--json", action="store_true", help="print the report as JSON")
    dr.add_argument(
        "--isolation", choices=["full", "reduced"], default="full", help="as for `grade`"
    )
    dr.set_defaults(func=lambda a: _doctor(a))

    from .lms.cli import register as register_lms

    register_lms(sub)

    from .reports.cli import register as register_report

    register_report(sub)

    from .gradescope import register as register_gradescope

    register_gradescope(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (_UsageError, FileNotFoundError) as e:
        print(f"error: {e.args[-1] if e.args else e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
