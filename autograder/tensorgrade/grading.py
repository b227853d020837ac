"""`tensorgrade grade`: grade a batch, one results.json per submission and a grades.csv.

The unit of work is "one submission in, one results.json out", idempotent: a result is reused
when the submission's bytes and the autograder are unchanged, so a killed batch resumes.

One submission can never stop the batch: whatever goes wrong while grading it (a bug of ours
that its input found, a worker process that died) becomes its result, "ungradable" with
``INTERNAL_ERROR`` as the reason and every test not run; the traceback goes to stderr (the
staff's log, never into results.json), and such a result is regraded on the next run.
"""

from __future__ import annotations

import functools
import hashlib
import multiprocessing
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from . import config, otter_engine, settings
from .config import Limits
from .course import Assignment, all_assignments
from .errors import NotFoundError, TensorgradeError, UsageError
from .results import (
    SubmissionResult,
    atomic_write_text,
    grades_csv,
    not_run,
    read_results_json,
    write_results_json,
)
from .submissions import Submission, Ungradable, notebook_bytes, read_bytes, sha256
from .testfiles import TestSpec, load_tests

ENGINES = ("trusted", "otter")
INTERNAL_ERROR = "internal error while grading this submission (see the staff log)"


class GradingError(TensorgradeError):
    """A batch that cannot start as asked (the message says why); exit status 2."""

    exit_code = 2


@dataclass
class GradeOptions:
    engine: str = "trusted"
    jobs: int = 1
    timeout: float = 900.0
    force: bool = False
    progress: bool = True
    isolation: str = "full"  # "reduced": no namespaces/private root/uid (recorded in results)
    gpu_slots: int = 0  # >0: pin each worker (and its sandboxes) to one GPU, this many per GPU
    # run the judge (hidden tests, decoding) as this user; only the zygote stays root
    judge_user: str = ""


def infer_assignment(root: Path, sub: Submission) -> Assignment:
    """From the file name, or from the `otter.Notebook("<id>.ipynb")` line of the init cell."""
    known = all_assignments(root)
    for a in known:
        if a.id in sub.path.name:
            return a
    try:
        text = read_bytes(sub.path)[:2_000_000].decode("utf-8", "replace")
    except (OSError, Ungradable):
        text = ""
    found = {m for m in re.findall(r'otter\.Notebook\(\\?"([\w.-]+)\.ipynb', text)}
    matches = [a for a in known if a.id in found]
    if len(matches) == 1:
        return matches[0]
    raise UsageError(
        f"cannot tell which assignment {sub.path.name} is for: pass --assignment "
        f"({', '.join(a.id for a in known)})"
    )


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_limits(a: Assignment) -> Limits:
    """Per-assignment limits from ``solutions/<id>/grading.yml`` (optional), checked."""
    return config.load_assignment(a)


def grade_one(
    a: Assignment,
    specs: list[TestSpec],
    sub: Submission,
    opts: GradeOptions,
    ag: str,
    slot: int = 0,
    prepare_next: bool = False,
) -> SubmissionResult:
    """Grade one submission; never raises (an unexpected error becomes an internal-error
    result, its traceback logged to stderr). ``prepare_next``: another submission follows in
    this process (the trusted engine readies its sandbox meanwhile)."""
    try:
        return _grade_one(a, specs, sub, opts, ag, slot, prepare_next)
    except Exception as e:  # noqa: BLE001 - one submission must not stop the batch
        return internal_error(a, specs, sub, opts, ag, e)


def internal_error(
    a: Assignment,
    specs: list[TestSpec],
    sub: Submission,
    opts: GradeOptions,
    ag: str,
    error: BaseException,
) -> SubmissionResult:
    """The result of a submission the grader failed on: its traceback to the staff's log (stderr),
    every test not run, and a reason that tells the student it was not their fault."""
    trace = "".join(traceback.format_exception(error))
    log = f"tensorgrade: {INTERNAL_ERROR}: {sub.path}\n{trace}"
    try:  # the message may quote the submission: a lone surrogate is shown escaped, not fatal
        print(log.encode("utf-8", "backslashreplace").decode(), file=sys.stderr, flush=True)
    except (OSError, ValueError):  # no stderr to write to: the result must still be made
        pass
    res = SubmissionResult(a.id, sub.key, opts.engine, "ungradable", reason=INTERNAL_ERROR)
    res.tests = [not_run(s, INTERNAL_ERROR) for s in specs]
    res.autograder_sha256 = ag  # no source_sha256: never reused, regraded on the next run
    return res


def is_internal_error(res: SubmissionResult) -> bool:
    return res.status == "ungradable" and res.reason == INTERNAL_ERROR


def _grade_one(
    a: Assignment,
    specs: list[TestSpec],
    sub: Submission,
    opts: GradeOptions,
    ag: str,
    slot: int = 0,
    prepare_next: bool = False,
) -> SubmissionResult:
    raw = b""
    try:
        raw = read_bytes(sub.path)
        data = notebook_bytes(raw, sub.path)
    except (Ungradable, OSError) as e:
        res = SubmissionResult(a.id, sub.key, opts.engine, "ungradable", reason=str(e))
        res.tests = [not_run(s, str(e)) for s in specs]
        res.source_sha256 = sha256(raw) if raw else ""
        res.autograder_sha256 = ag
        return res
    if opts.engine == "trusted":
        from .judge import engine, warm

        res = engine.grade(
            data,
            sub.path.name,
            a.id,
            specs,
            warm=warm.judge_modules(a),
            limits=load_limits(a),
            files_from=a.student_dir,
            slot=slot,
            forbidden=_hidden([(a, sub)]),
            isolation=opts.isolation,
            prepare_next=prepare_next,
        )
    else:
        res = otter_engine.grade(data, sub.path.name, a.autograder_zip, specs, timeout=opts.timeout)
    res.assignment, res.submission = a.id, sub.key
    res.source_sha256, res.autograder_sha256 = sha256(raw), ag
    return res


def grade_many(
    jobs: list[tuple[Assignment, Submission]], opts: GradeOptions, ags: dict[str, str]
) -> Iterator[tuple[tuple[Assignment, Submission], SubmissionResult]]:
    """Grade ``(assignment, submission)`` pairs on ``opts.jobs`` processes; yields each as it ends.

    Processes, not threads: the hidden tests run in the judge, and torch's forward-mode AD
    (``torch.func.jvp``, ``hessian``) keeps global state, so two threads computing references at
    once corrupt each other's results (seen in CI as a relative error of 1e302). Each worker
    process grades one submission at a time, with a sandbox slot of its own.
    """
    gpu_ids = _gpu_plan(opts)
    workers = max(1, min(opts.gpu_slots * len(gpu_ids) if gpu_ids else opts.jobs, len(jobs)))
    if workers == 1 and not gpu_ids and not opts.judge_user:
        if opts.engine == "trusted" and jobs:
            prestart_zygote(jobs, opts.isolation)
        try:
            for i, job in enumerate(jobs):
                yield job, _grade_job(job, opts, ags[job[0].id], prepare_next=i + 1 < len(jobs))
        finally:
            _discard_spare()
        return
    died = []
    for job, res in _pool(jobs, opts, ags, workers, gpu_ids):
        if isinstance(res, BrokenProcessPool):
            died.append(job)  # a worker died: this job's, or another job took the pool down
        else:
            yield job, res
    # each again, alone in a fresh worker: only a job that kills its worker again fails
    for job in died:
        for _, res in _pool([job], opts, ags, 1, gpu_ids):
            yield job, res if isinstance(res, SubmissionResult) else _failed(job, opts, ags, res)


def _pool(
    jobs: list[tuple[Assignment, Submission]],
    opts: GradeOptions,
    ags: dict[str, str],
    workers: int,
    gpu_ids: list[str],
) -> Iterator[tuple[tuple[Assignment, Submission], SubmissionResult | BrokenProcessPool]]:
    """Grade ``jobs`` on a pool of ``workers`` processes; yields each job with its result, or
    with BrokenProcessPool if a worker died before it was done."""
    ctx = multiprocessing.get_context("spawn")  # a clean judge: no inherited threads or CUDA
    counter = ctx.Value("i", 0)
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=ctx,
        initializer=_start_worker,
        initargs=(counter, gpu_ids, opts.judge_user, jobs, opts.isolation),
    ) as pool:
        futs = {pool.submit(_grade_job, job, opts, ags[job[0].id]): job for job in jobs}
        try:
            for fut in as_completed(futs):
                job = futs[fut]
                try:
                    yield job, fut.result()
                except BrokenProcessPool as e:
                    yield job, e
                except Exception as e:  # noqa: BLE001 - e.g. a result that could not be sent back
                    yield job, _failed(job, opts, ags, e)
        except BaseException:
            for f in futs:
                f.cancel()
            raise


def _failed(
    job: tuple[Assignment, Submission], opts: GradeOptions, ags: dict[str, str], e: BaseException
) -> SubmissionResult:
    a, sub = job
    try:
        specs = _specs(a.tests_dir, ags[a.id])
    except Exception:  # noqa: BLE001 - the result must be written even so
        specs = []
    return internal_error(a, specs, sub, opts, ags[a.id], e)


_worker_slot = 0


def check_judge_user(user: str) -> None:
    """Fail early, with a reason, if the grader can't run its judge as ``user``."""
    import pwd

    if os.geteuid() != 0:
        raise GradingError("--judge-user needs root (to start sandboxes as their own uids)")
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise GradingError(f"--judge-user: no user named {user!r}") from None
    if pw.pw_uid == 0:
        raise GradingError("--judge-user must be an unprivileged user, not root")


def _gpu_plan(opts: GradeOptions) -> list[str]:
    """The GPUs workers are pinned to (none unless --gpu-slots was given)."""
    if opts.gpu_slots <= 0:
        return []
    from .judge.gpus import visible_gpus

    found = visible_gpus()
    if not found:
        raise GradingError("--gpu-slots was given but no GPU is visible (nvidia-smi lists none)")
    return found


def _hidden(jobs: list[tuple[Assignment, Submission]]) -> list[Path]:
    """Folders of the course no sandbox may ever see, even as a part of a visible one."""
    roots = sorted({a.root for a, _ in jobs})
    return [r / d for r in roots for d in ("solutions", "dist", "tests")]


def _start_worker(
    counter,
    gpu_ids: list[str],
    judge_user: str,
    jobs: list[tuple[Assignment, Submission]],
    isolation: str,
) -> None:
    """Give this worker process its sandbox slot and, with --gpu-slots, its one GPU: set before
    torch touches CUDA, and inherited by every sandbox the worker starts. With a judge user, start
    the zygote (which must stay root to confine sandboxes), then drop to that user for good."""
    global _worker_slot
    with counter.get_lock():
        _worker_slot = counter.value
        counter.value += 1
    if gpu_ids:
        from .judge.gpus import gpu_for_slot

        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_for_slot(_worker_slot, gpu_ids)
    prestart_zygote(jobs, isolation)  # with its GPU: the zygote's sandboxes inherit it
    import torch

    # the judge's own tensor work (references, finite differences) shares the cores with the
    # other workers and every sandbox: one thread each, as the sandboxes have
    torch.set_num_threads(int(settings.threads()))
    if judge_user:
        _become(judge_user, _hidden(jobs), isolation)


def _discard_spare() -> None:
    """Close the sandbox readied for a submission that did not come (the batch ended)."""
    if "tensorgrade.judge.sandbox" in sys.modules:
        from .judge.sandbox import Spare

        Spare.discard()


def prestart_zygote(jobs: list[tuple[Assignment, Submission]], isolation: str) -> None:
    """Start the sandbox starter now, before this process imports torch: the two imports run
    side by side instead of one after the other (about a second of every cold start). It also
    imports what these assignments' sandboxes would each import again (``judge.warm``)."""
    from .judge import warm
    from .judge.starter import Zygote

    preload = sorted({m for a in {a for a, _ in jobs} for m in warm.sandbox_modules(a)})
    Zygote.prestart(_hidden(jobs), namespaces=isolation == "full", preload=preload)


def _become(user: str, hidden: list[Path], isolation: str) -> None:
    """Start the zygote while root (it decides every sandbox's uid and layers), then drop."""
    import pwd

    from .judge.sandbox import Zygote

    pw = pwd.getpwnam(user)
    Zygote.configure(hidden, namespaces=isolation == "full")
    if Zygote.get() is None:
        raise GradingError(f"the sandbox starter (zygote) could not run: {Zygote.failure}")
    os.setgroups([])
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)


@functools.cache
def _specs(tests_dir: Path, ag: str) -> list[TestSpec]:  # ag: a rebuilt bundle is reloaded
    return load_tests(tests_dir)


def _grade_job(
    job: tuple[Assignment, Submission], opts: GradeOptions, ag: str, prepare_next: bool = False
) -> SubmissionResult:
    """One job, in this process or a worker; never raises (see ``grade_one``)."""
    a, sub = job
    try:
        specs = _specs(a.tests_dir, ag)
    except Exception as e:  # noqa: BLE001 - one submission must not stop the batch
        return internal_error(a, [], sub, opts, ag, e)
    return grade_one(a, specs, sub, opts, ag, _worker_slot, prepare_next)


@dataclass
class BatchPlan:
    """What a batch holds and what of it needs grading: shared by the local pool and the Slurm
    backend (``slurm.py``), so both reuse exactly the same results."""

    jobs: list[tuple[Assignment, Submission]]  # every submission, in the intake's order
    ags: dict[str, str]  # assignment id -> sha256 of its autograder bundle
    reused: dict[str, SubmissionResult]  # key -> a result already up to date
    todo: list[tuple[Assignment, Submission]]  # to grade


def is_fresh(old: SubmissionResult, source_sha256: str, ag: str, engine: str) -> bool:
    """Whether ``old`` is the result of grading these bytes with this autograder and engine."""
    same = old.source_sha256 == source_sha256 and old.autograder_sha256 == ag
    return same and old.engine == engine and not is_internal_error(old)


def plan_batch(
    root: Path,
    paths: list[Path],
    out_dir: Path,
    opts: GradeOptions,
    assignment_id: str | None = None,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> BatchPlan:
    """Read the submissions and sort them into results to reuse and work to do."""
    from .course import get_assignments
    from .pins import torch_pin_mismatch
    from .submissions import IntakeError, read_intake

    _gpu_plan(opts)  # fail before any work if --gpu-slots can't be honoured
    if mismatch := torch_pin_mismatch():
        raise GradingError(mismatch)
    if opts.judge_user:
        check_judge_user(opts.judge_user)
    try:  # LMS downloads are expanded where the judge user can read them
        intake = read_intake(paths, share_with=opts.judge_user)
    except IntakeError as e:
        raise GradingError(str(e)) from None
    for note in intake.notes:
        log(note)
    subs = intake.submissions
    if not subs:
        raise NotFoundError("no notebooks found in " + ", ".join(map(str, paths)))
    fixed = get_assignments(root, [assignment_id])[0] if assignment_id else None
    jobs = []
    for sub in subs:
        a = fixed or infer_assignment(root, sub)
        if not a.autograder_zip.is_file():
            raise NotFoundError(
                f"{a.id} is not built ({a.autograder_zip} missing): run `tensorgrade build {a.id}`"
            )
        jobs.append((a, sub))
    for a in {a for a, _ in jobs}:  # a bad grading.yml stops the batch before any grading
        load_limits(a)

    ag = {a.id: file_sha256(a.autograder_zip) for a in {a for a, _ in jobs}}

    results: dict[str, SubmissionResult] = {}
    todo = []
    for a, sub in jobs:
        path = out_dir / sub.key / "results.json"
        if not opts.force and path.is_file():
            try:
                old = read_results_json(path)
                if is_fresh(old, sha256(read_bytes(sub.path)), ag[a.id], opts.engine):
                    if old.lms != sub.lms:  # the same work, now known to belong to someone
                        old.lms = dict(sub.lms)
                        write_results_json(old, path)
                    results[sub.key] = old
                    continue
            except Exception:  # an unreadable old result is simply regraded
                pass
        todo.append((a, sub))
    if results:
        log(f"reusing {len(results)} result(s) already graded with the same autograder")
    return BatchPlan(jobs, ag, results, todo)


def grade_batch(
    root: Path,
    paths: list[Path],
    out_dir: Path,
    opts: GradeOptions,
    assignment_id: str | None = None,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> list[SubmissionResult]:
    plan = plan_batch(root, paths, out_dir, opts, assignment_id, log)
    jobs, ag, results, todo = plan.jobs, plan.ags, dict(plan.reused), plan.todo

    bar = tqdm(
        total=len(todo), desc="grading", unit="nb", disable=not opts.progress, file=sys.stderr
    )

    for (a, sub), res in grade_many(todo, opts, ag):
        path = out_dir / sub.key / "results.json"
        res.lms = dict(sub.lms)  # who it belongs to, from the LMS's download (for exports)
        try:
            write_results_json(res, path)
        except (OSError, MemoryError):  # the disk, not this submission: stop
            raise
        except Exception as e:  # noqa: BLE001 - a result we cannot write is our bug
            res = _failed((a, sub), opts, ag, e)
            res.lms = dict(sub.lms)
            write_results_json(res, path)
        results[sub.key] = res
        bar.set_postfix_str(f"{sub.key}: {res.score:g}/{res.max_score:g}")
        bar.update()
    bar.close()
    ordered = [results[s.key] for _, s in jobs]
    atomic_write_text(out_dir / "grades.csv", grades_csv(ordered))
    return ordered
