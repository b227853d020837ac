"""`tensorgrade grade`: a batch of submissions, on this machine or as a Slurm job array."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from ..errors import IncompleteError, UsageError
from . import options


def grade(args: argparse.Namespace) -> int:
    from ..course import find_root
    from ..grading import GradeOptions, grade_batch, is_internal_error

    if args.gpu_slots < 0 or args.jobs < 1:
        raise UsageError("--jobs must be at least 1 and --gpu-slots at least 0")
    if (args.gpu_slots or args.judge_user) and args.engine != "trusted":
        raise UsageError("--gpu-slots and --judge-user need the trusted engine")
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
        raise UsageError(f"{', '.join(slurm_only)} need(s) --backend slurm")
    if args.backend == "slurm":
        batch = _grade_slurm(root, args, opts)
        if batch.results is None:  # submitted without waiting, or a dry run
            return 0
        results = batch.results
    else:
        results = grade_batch(root, args.paths, args.output, opts, args.assignment)
    width = max(len(r.submission) for r in results)
    for r in results:
        line = f"{r.submission:<{width}}  {r.score:6.2f} / {r.max_score:g}  {r.status}"
        if r.status != "graded":
            line += f": {r.reason.splitlines()[0] if r.reason else ''}"
        print(line)
    print(f"results in {args.output}/ (grades.csv, <submission>/results.json)")
    failed = [r.submission for r in results if is_internal_error(r)]
    if failed:  # everything is written; the status tells a script that staff must look
        raise IncompleteError(
            f"internal error of the grader on {len(failed)} submission(s) ({_some(failed)}): "
            "tracebacks above; they are regraded on the next run"
        )
    if args.backend == "slurm":
        from ..slurm import task_end

        lost = [r.submission for r in results if task_end(r) is not None]
        if lost:
            raise IncompleteError(
                f"{len(lost)} submission(s) not graded because their Slurm task ended first "
                f"({_some(lost)}): their reasons say how; run the same command again to grade them"
            )
    return 0


def _some(keys: list[str]) -> str:
    """The first ten of ``keys``, and `...` when there are more."""
    return ", ".join(keys[:10]) + (", ..." if len(keys) > 10 else "")


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
    from ..slurm import DEFAULT_PER_TASK, SlurmOptions, grade_slurm

    if (args.per_task is not None and args.per_task < 1) or (
        args.cpus_per_task is not None and args.cpus_per_task < 1
    ):
        raise UsageError("--per-task and --cpus-per-task must be at least 1")
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


def register(sub) -> None:
    g = options.command(
        sub,
        "grade",
        grade,
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
    options.output(g, "default: results/", default=Path("results"))
    options.engine(
        g,
        help=(
            "trusted (default): student code runs in a sandbox, hidden tests in this process; "
            "otter: otter's own runner (hidden tests run in the student's kernel; a comparison "
            "point only)"
        ),
    )
    options.jobs(g, 1)
    g.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="otter engine: seconds per submission (default 900); the trusted engine takes its "
        "limits from solutions/<id>/grading.yml",
    )
    g.add_argument("--force", action="store_true", help="regrade even if a result is up to date")
    options.isolation(
        g,
        help="trusted engine: full (default: every layer this machine gives, see `tensorgrade "
        "doctor`) or reduced (no namespaces or private root, still its own uid, Landlock and "
        "seccomp: only where namespaces break the GPU); recorded in every result",
    )
    options.gpu_slots(
        g,
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
    options.quiet(g)
    g.add_argument(
        "--backend",
        choices=["local", "slurm"],
        default="local",
        help="local (default): a process pool on this machine; slurm: a Slurm job array over "
        "the submissions that need grading (see docs/slurm.md); OUTPUT must be on storage the "
        "cluster's nodes share",
    )
    _slurm_options(g.add_argument_group("Slurm backend (--backend slurm)"))


def _slurm_options(sl) -> None:
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
