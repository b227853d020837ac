"""`tensorgrade grade --backend slurm`: grade a batch as a Slurm job array.

The unit of work stays the local pool's: one submission in, one ``results.json`` out, reused when
up to date. What changes is who runs it. The submitting process plans the batch exactly as the
local pool does (``grading.plan_batch``), packs the submissions that need grading several per
array task (one task start-up, an ``import torch``, serves them all), and writes everything a task
needs next to the results, on the storage the cluster shares::

    RESULTS/.slurm/<array>/manifest.json   options, and each task's submissions
    RESULTS/.slurm/<array>/in/<key>/<name> the exact bytes planned (an LMS download's expanded
                                           files live only as long as the submitting process)
    RESULTS/.slurm/<array>/grade.sbatch    the batch script (readable; ``sbatch`` it by hand)
    RESULTS/.slurm/<array>/job.json        the job id Slurm gave the array
    RESULTS/.slurm/<array>/logs/%a.out     each task's log (the staff's, tracebacks included)
    RESULTS/.slurm/<array>/ended.json      written once every task has ended and been accounted

Each task runs ``python -m tensorgrade.slurm task MANIFEST INDEX`` with the submitting
interpreter, grades its slice with ``grading.grade_many`` and writes each result atomically.
A task that ends without writing a submission's result (failed, timed out, cancelled,
preempted, node failure, out of memory) is accounted by whoever watches the array: each of its
submissions gets an "ungradable" result whose reason is the fixed sentence of the task's end
(``TaskEnd``), never silence; such a result is regraded on the next run, like an internal error.
Running the same command again reuses what is up to date, waits for tasks still queued or
running, and submits only what is missing.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import json
import math
import os
import re
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .course import Assignment, get_assignments
from .grading import (
    BatchPlan,
    GradeOptions,
    GradingError,
    _specs,
    file_sha256,
    grade_many,
    is_fresh,
    load_limits,
    plan_batch,
)
from .results import (
    SubmissionResult,
    atomic_write_text,
    grades_csv,
    not_run,
    read_results_json,
    write_results_json,
)
from .submissions import Submission, Ungradable, read_bytes, sha256

STATE_DIR = ".slurm"
MANIFEST_VERSION = 1
DEFAULT_PER_TASK = 8  # a task's start-up (~10 s under load here) against ~2-8 s per submission
# seconds a task may spend before and after its submissions (interpreter, torch, the judge)
STARTUP_SECONDS = 300
# memory of the judge and the sandbox starter, on top of the sandboxes' own limit
JUDGE_MB = 2048


class TaskEnd(enum.Enum):
    """How a task ended without writing a submission's result (Slurm's job states)."""

    COMPLETED = "COMPLETED"  # exited 0 yet wrote no result for it
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    CANCELLED = "CANCELLED"
    PREEMPTED = "PREEMPTED"
    NODE_FAIL = "NODE_FAIL"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    UNKNOWN = "UNKNOWN"  # the scheduler no longer remembers the task


_AGAIN = "it is regraded on the next run of the same command"
# The reason each result of such a task carries, for people (the state itself is in batch_end).
TASK_END_REASONS: dict[TaskEnd, str] = {
    TaskEnd.COMPLETED: f"the grading job ended without grading this submission; {_AGAIN}",
    TaskEnd.FAILED: f"the grading job failed before grading this submission (see its log); {_AGAIN}",
    TaskEnd.TIMEOUT: f"the grading job reached its time limit before this submission; {_AGAIN}",
    TaskEnd.CANCELLED: f"the grading job was cancelled before grading this submission; {_AGAIN}",
    TaskEnd.PREEMPTED: f"the grading job was preempted before grading this submission; {_AGAIN}",
    TaskEnd.NODE_FAIL: f"the grading job's node failed before this submission; {_AGAIN}",
    TaskEnd.OUT_OF_MEMORY: f"the grading job ran out of memory before this submission; {_AGAIN}",
    TaskEnd.BOOT_FAIL: f"the grading job's node did not boot; {_AGAIN}",
    TaskEnd.DEADLINE: f"the grading job reached its deadline before this submission; {_AGAIN}",
    TaskEnd.UNKNOWN: f"the grading job ended without a result for this submission; {_AGAIN}",
}
# Slurm states of a task that may still write results
LIVE_STATES = {
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "REQUEUED",
    "REQUEUE_FED",
    "REQUEUE_HOLD",
    "RESIZING",
    "RESV_DEL_HOLD",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
    "SUSPENDED",
    "SPECIAL_EXIT",
}


def task_end(res: SubmissionResult) -> TaskEnd | None:
    """How the task that should have graded ``res``'s submission ended, if that is what
    ``res`` records (None for a result the grader wrote)."""
    if res.status != "ungradable" or not res.batch_end:
        return None
    return _end(res.batch_end)


@dataclass
class SlurmOptions:
    """The command line's Slurm settings; empty strings are derived from the assignment."""

    per_task: int = DEFAULT_PER_TASK
    cpus_per_task: int = 0  # 0: one per submission graded at once
    mem: str = ""
    time: str = ""  # sbatch's formats; "" = per_task x submission_timeout + start-up
    partition: str = ""
    account: str = ""
    sbatch: list[str] = field(default_factory=list)  # passed through as #SBATCH lines
    # a command the task's interpreter runs under, e.g. "apptainer exec --nv grading.sif"
    wrapper: list[str] = field(default_factory=list)
    wait: bool = True
    dry_run: bool = False


@dataclass
class Entry:
    """One submission in a manifest."""

    key: str
    assignment: str
    path: str  # the copy in the array's folder (or the original if it could not be read)
    source_sha256: str
    autograder_sha256: str
    lms: dict = field(default_factory=dict)


@dataclass
class Manifest:
    """Everything an array task needs, written next to the results before submitting."""

    array: str  # the folder's name under RESULTS/.slurm/
    root: str
    output: str
    python: str
    engine: str
    isolation: str
    timeout: float
    jobs: int
    gpu_slots: int
    judge_user: str
    tasks: list[list[Entry]]
    version: int = MANIFEST_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    @classmethod
    def read(cls, path: Path) -> Manifest:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        if d.get("version") != MANIFEST_VERSION:
            raise GradingError(f"{path}: manifest version {d.get('version')} is not known")
        d["tasks"] = [[Entry(**e) for e in t] for t in d["tasks"]]
        return cls(**d)

    def options(self) -> GradeOptions:
        return GradeOptions(
            engine=self.engine,
            jobs=self.jobs,
            timeout=self.timeout,
            progress=False,
            isolation=self.isolation,
            gpu_slots=self.gpu_slots,
            judge_user=self.judge_user,
        )


# -- the task: runs on a node ---------------------------------------------------------------


def run_task(manifest_path: Path, index: int) -> int:
    """Grade task ``index``'s submissions of a manifest, writing each result as it ends.
    A submission whose result is already current (a requeued task) is not graded again."""
    m = Manifest.read(manifest_path)
    if not 0 <= index < len(m.tasks):
        print(f"error: task {index} is not in {manifest_path}", file=sys.stderr)
        return 2
    root, out = Path(m.root), Path(m.output)
    entries = m.tasks[index]
    assignments = {a.id: a for a in get_assignments(root, sorted({e.assignment for e in entries}))}
    ags = {i: file_sha256(a.autograder_zip) for i, a in assignments.items()}
    opts = m.options()
    todo = []
    for e in entries:
        if _result_for(out, e, m.engine, ags[e.assignment]) is None:
            todo.append((assignments[e.assignment], Submission(e.key, Path(e.path), e.lms)))
    print(f"task {index}: {len(todo)} of {len(entries)} submission(s) to grade", flush=True)
    for (_, sub), res in grade_many(todo, opts, ags):
        res.lms = dict(sub.lms)
        write_results_json(res, out / sub.key / "results.json")
        print(f"{sub.key}: {res.status} {res.score:g}/{res.max_score:g}", flush=True)
    return 0


def _result_for(out: Path, e: Entry, engine: str, ag: str | None = None) -> SubmissionResult | None:
    """The result of grading exactly this entry's bytes, if one is written (any outcome the
    grader gave it, internal errors included: those are results too). The submitter removed
    every stale result of the array's submissions before submitting it."""
    try:
        res = read_results_json(out / e.key / "results.json")
    except Exception:  # noqa: BLE001 - absent or unreadable: not there
        return None
    if res.source_sha256 != e.source_sha256 or res.engine != engine:
        return None
    if ag is not None and not is_fresh(res, e.source_sha256, ag, engine):
        return None
    return res


# -- the scheduler ----------------------------------------------------------------------------


def _slurm(*cmd: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise GradingError(
            f"{cmd[0]} not found: the Slurm backend needs Slurm's client commands"
        ) from None
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, 1, "", f"{cmd[0]} did not answer in 60 s")


def _indices(spec: str) -> list[int]:
    """Slurm's task-id list ("3", "0-4", "1,3-5%2") as numbers."""
    out: list[int] = []
    for part in spec.split("%")[0].split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            out += range(int(lo), int(hi) + 1)
        elif part.strip().isdigit():
            out.append(int(part))
    return out


def live_tasks(job_id: str) -> dict[int, str] | None:
    """Task index -> state for an array's tasks that are queued or running; None when the
    scheduler could not be asked (then nothing may be concluded)."""
    proc = _slurm("squeue", "-h", "-r", "-j", job_id, "-o", "%K|%T")
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:  # the controller has forgotten the whole array
            return {}
        return None
    live: dict[int, str] = {}
    for line in proc.stdout.splitlines():
        task, _, state = line.strip().partition("|")
        for i in _indices(task):
            live[i] = state
    return live


def ended_states(job_id: str) -> dict[int, TaskEnd]:
    """How ended tasks ended, from ``scontrol`` (it keeps ended jobs ``MinJobAge`` seconds) or,
    where accounting is set up, ``sacct``. Tasks neither knows are left out."""
    out: dict[int, TaskEnd] = {}
    proc = _slurm("scontrol", "show", "job", "-o", job_id)
    for line in proc.stdout.splitlines() if proc.returncode == 0 else []:
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if fields.get("ArrayJobId") != job_id:
            continue
        for i in _indices(fields.get("ArrayTaskId", "")):
            out[i] = _end(fields.get("JobState", ""))
    if len(out) == 0:
        proc = _slurm("sacct", "-n", "-P", "-X", "-j", job_id, "--format=JobID,State")
        for line in proc.stdout.splitlines() if proc.returncode == 0 else []:
            jid, _, state = line.partition("|")
            task = jid.partition("_")[2].strip("[]")
            for i in _indices(task):
                out[i] = _end(state.split()[0] if state.split() else "")
    return out


def _end(state: str) -> TaskEnd:
    try:
        return TaskEnd(state)
    except ValueError:
        return TaskEnd.UNKNOWN


# -- an array on disk -------------------------------------------------------------------------


@dataclass
class Array:
    folder: Path
    manifest: Manifest
    job_id: str

    @property
    def entries(self) -> Iterator[tuple[int, Entry]]:
        for i, t in enumerate(self.manifest.tasks):
            for e in t:
                yield i, e


def open_arrays(out_dir: Path) -> list[Array]:
    """Arrays submitted for this results folder whose tasks are not all accounted for yet."""
    found = []
    for folder in sorted((out_dir / STATE_DIR).glob("*/")):
        if (folder / "ended.json").exists() or not (folder / "job.json").is_file():
            continue
        try:
            job = json.loads((folder / "job.json").read_text())["job_id"]
            found.append(Array(folder, Manifest.read(folder / "manifest.json"), str(job)))
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"warning: ignoring {folder}: {e}", file=sys.stderr)
    return found


def owners(out_dir: Path) -> dict[str, str]:
    """Submission key -> the newest submitted array that lists it (its folder's name; folders
    are named in the order they were submitted). Only that array answers for the key: an older
    one whose task ended without it was accounted, and the key submitted again."""
    found: dict[str, str] = {}
    for folder in sorted((out_dir / STATE_DIR).glob("*/")):
        if not (folder / "job.json").is_file():
            continue  # never submitted (sbatch refused it)
        try:
            tasks = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["tasks"]
        except (OSError, ValueError, KeyError):
            continue
        for t in tasks:
            for e in t:
                found[e["key"]] = folder.name
    return found


def account(
    array: Array,
    live: dict[int, str],
    log: Callable[[str], None],
    owner: dict[str, str] | None = None,
) -> bool:
    """Give every submission of an ended task that has no result one that says how the task
    ended (only those this array still answers for, see ``owners``); True once every task has
    ended (the array is then closed)."""
    out = Path(array.manifest.output)
    ended = {i for i in range(len(array.manifest.tasks)) if i not in live}
    missing = [
        (i, e)
        for i, e in array.entries
        if i in ended
        and (owner is None or owner.get(e.key) == array.folder.name)
        and _result_for(out, e, array.manifest.engine) is None
    ]
    if missing:
        states = ended_states(array.job_id)
        by_task: dict[TaskEnd, int] = {}
        for i, e in missing:
            how = states.get(i, TaskEnd.UNKNOWN)
            res = failure_result(e, how, array.manifest.engine, Path(array.manifest.root))
            write_results_json(res, out / e.key / "results.json")
            by_task[how] = by_task.get(how, 0) + 1
        for how, n in sorted(by_task.items(), key=lambda kv: kv[0].value):
            log(
                f"array {array.job_id}: {n} submission(s) recorded as ungradable: task ended "
                f"{how.value} before grading them ({_AGAIN})"
            )
    if len(ended) == len(array.manifest.tasks):
        ended_as = {i: how.value for i, how in ended_states(array.job_id).items()}
        atomic_write_text(array.folder / "ended.json", json.dumps({"tasks": ended_as}) + "\n")
        return True
    return False


def failure_result(e: Entry, how: TaskEnd, engine: str, root: Path) -> SubmissionResult:
    """An entry's result when its task ended without grading it: every test not run, no
    source hash (so it is never reused)."""
    reason = TASK_END_REASONS[how]
    res = SubmissionResult(e.assignment, e.key, engine, "ungradable", reason=reason)
    res.batch_end = how.value
    try:
        a = get_assignments(root, [e.assignment])[0]
        res.tests = [not_run(s, reason) for s in _specs(a.tests_dir, e.autograder_sha256)]
    except Exception:  # noqa: BLE001 - the result must be written even so
        pass
    res.autograder_sha256 = e.autograder_sha256
    res.lms = dict(e.lms)
    return res


# -- submitting -------------------------------------------------------------------------------


def derived_resources(
    assignments: list[Assignment], opts: GradeOptions, sopts: SlurmOptions
) -> dict[str, str]:
    """sbatch's per-task resources: the command line's, else from the assignments' limits."""
    at_once = max(1, opts.gpu_slots or opts.jobs)
    limits = [load_limits(a) for a in assignments]
    seconds = max(lim.submission_timeout + lim.startup_timeout for lim in limits)
    rounds = math.ceil(sopts.per_task / at_once)
    minutes = math.ceil((rounds * seconds + STARTUP_SECONDS) / 60)
    mem_mb = max(lim.memory_mb for lim in limits) * at_once + JUDGE_MB
    res = {
        "cpus-per-task": str(sopts.cpus_per_task or at_once),
        "mem": sopts.mem or f"{mem_mb}M",
        "time": sopts.time or str(minutes),
    }
    if opts.gpu_slots:
        res["gres"] = "gpu:1"
    if sopts.partition:
        res["partition"] = sopts.partition
    if sopts.account:
        res["account"] = sopts.account
    return res


def batch_script(
    folder: Path,
    n_tasks: int,
    n_subs: int,
    resources: dict[str, str],
    sopts: SlurmOptions,
    root: Path,
) -> str:
    """The batch script of an array (it names the manifest; nothing else is hidden)."""
    lines = [
        "#!/bin/bash",
        f"# tensorgrade: grade {n_subs} submission(s) as {n_tasks} array task(s); each task",
        "# grades its share of manifest.json (next to this file) and writes one results.json",
        "# per submission to the results folder. Submit again by hand with: sbatch <this file>",
        f"#SBATCH --job-name=tensorgrade-{folder.name}",
        f"#SBATCH --array=0-{n_tasks - 1}",
        *(f"#SBATCH --{k}={v}" for k, v in resources.items()),
        f"#SBATCH --chdir={_sbatch_value(root)}",
        f"#SBATCH --output={_sbatch_value(folder / 'logs' / '%a.out')}",
        "#SBATCH --open-mode=append",
        *(f"#SBATCH {opt}" for opt in sopts.sbatch),
        "set -eu",
        f"export TENSORGRADE_ROOT={shlex.quote(str(root))}",
        f"exec {shlex.join([*sopts.wrapper, sys.executable])} -m tensorgrade.slurm task \\",
        f'    {shlex.quote(str(folder / "manifest.json"))} "$SLURM_ARRAY_TASK_ID"',
        "",
    ]
    return "\n".join(lines)


def _sbatch_value(path: Path) -> str:
    """A path as an #SBATCH line takes it (quoted only where it must be)."""
    text = str(path)
    return f'"{text}"' if re.search(r"\s", text) else text


def _packed(todo: list, per_task: int) -> list[list]:
    """``todo`` in tasks of at most ``per_task``, as even as the count allows."""
    n = math.ceil(len(todo) / per_task)
    return [todo[i::n] for i in range(n)] if n else []


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    """One submitter at a time per results folder (two must not submit the same work)."""
    state = out_dir / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    with open(state / "lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _prepare(
    root: Path,
    out_dir: Path,
    plan: BatchPlan,
    todo: list[tuple[Assignment, Submission]],
    opts: GradeOptions,
    sopts: SlurmOptions,
    folder: Path,
) -> tuple[Manifest, str]:
    """The manifest and script of an array over ``todo`` (written by ``_submit``)."""
    tasks = []
    for chunk in _packed(todo, sopts.per_task):
        entries = []
        for a, sub in chunk:
            try:  # graded from a copy of the bytes planned, in the array's own folder
                digest = sha256(read_bytes(sub.path))
                path = folder / "in" / sub.key / sub.path.name
            except (Ungradable, OSError):  # graded (as ungradable) from where it is
                digest, path = "", sub.path.absolute()
            entries.append(Entry(sub.key, a.id, str(path), digest, plan.ags[a.id], dict(sub.lms)))
        tasks.append(entries)
    m = Manifest(
        array=folder.name,
        root=str(root),
        output=str(out_dir),
        python=sys.executable,
        engine=opts.engine,
        isolation=opts.isolation,
        timeout=opts.timeout,
        jobs=opts.jobs,
        gpu_slots=opts.gpu_slots,
        judge_user=opts.judge_user,
        tasks=tasks,
    )
    resources = derived_resources(sorted({a for a, _ in todo}, key=lambda a: a.id), opts, sopts)
    return m, batch_script(folder, len(tasks), len(todo), resources, sopts, root)


def _submit(m: Manifest, script: str, plan: BatchPlan, folder: Path) -> Array:
    """Write the array's folder (inputs, manifest, script), then ``sbatch`` it."""
    by_key = {sub.key: sub for _, sub in plan.jobs}
    out = Path(m.output)
    for t in m.tasks:
        for e in t:
            sub = by_key[e.key]
            if e.path != str(sub.path.absolute()):
                data = read_bytes(sub.path)  # it may have changed since it was planned
                e.source_sha256 = sha256(data)
                Path(e.path).parent.mkdir(parents=True, exist_ok=True)
                Path(e.path).write_bytes(data)
            # a stale result goes now: a result with the planned bytes' hash is then this array's
            (out / e.key / "results.json").unlink(missing_ok=True)
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "manifest.json", m.to_json())
    atomic_write_text(folder / "grade.sbatch", script)
    proc = _slurm("sbatch", "--parsable", str(folder / "grade.sbatch"))
    if proc.returncode != 0:
        raise GradingError(f"sbatch refused the array: {proc.stderr.strip() or proc.stdout}")
    job_id = proc.stdout.strip().split(";")[0]
    atomic_write_text(folder / "job.json", json.dumps({"job_id": job_id}) + "\n")
    return Array(folder, m, job_id)


@dataclass
class SlurmBatch:
    """What ``grade_slurm`` did: results (None when it did not wait), and arrays touched."""

    results: list[SubmissionResult] | None
    submitted: list[str] = field(default_factory=list)  # job ids submitted by this run
    waited: list[str] = field(default_factory=list)  # job ids of earlier runs waited for


def grade_slurm(
    root: Path,
    paths: list[Path],
    out_dir: Path,
    opts: GradeOptions,
    sopts: SlurmOptions,
    assignment_id: str | None = None,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
    echo: Callable[[str], None] = print,
) -> SlurmBatch:
    """Plan as the local pool does, account for earlier arrays, submit what is missing, and
    (unless told not to) wait for every array of this folder and write grades.csv."""
    if sopts.per_task < 1:
        raise GradingError("--per-task must be at least 1")
    out_dir = out_dir.absolute()
    root = root.absolute()
    if sopts.dry_run:
        plan = plan_batch(root, paths, out_dir, opts, assignment_id, log)
        return _dry_run(root, out_dir, plan, opts, sopts, echo)
    with _locked(out_dir):
        owner = owners(out_dir)
        flying: dict[str, str] = {}  # key -> job id of a live task that will grade it
        for arr in open_arrays(out_dir):
            live = live_tasks(arr.job_id)
            if live is None:
                raise GradingError(f"squeue could not tell the state of array {arr.job_id}")
            if not account(arr, live, log, owner):
                for i, e in arr.entries:
                    if i in live and owner.get(e.key) == arr.folder.name:
                        flying[e.key] = arr.job_id
        plan = plan_batch(root, paths, out_dir, opts, assignment_id, log)
        todo = [(a, s) for a, s in plan.todo if s.key not in flying]
        waiting = sorted({flying[s.key] for _, s in plan.todo if s.key in flying})
        if waiting:
            n = sum(1 for _, s in plan.todo if s.key in flying)
            log(f"{n} submission(s) already queued or running in array(s) {', '.join(waiting)}")
        batch = SlurmBatch(None, waited=waiting)
        if todo:
            # named in submission order (submissions are one at a time, under the lock)
            name = f"{datetime.now(UTC):%Y%m%d-%H%M%S-%f}-{secrets.token_hex(2)}"
            folder = out_dir / STATE_DIR / name
            m, script = _prepare(root, out_dir, plan, todo, opts, sopts, folder)
            arr = _submit(m, script, plan, folder)
            batch.submitted.append(arr.job_id)
            log(
                f"submitted array {arr.job_id}: {len(todo)} submission(s) in {len(m.tasks)} "
                f"task(s) ({folder.relative_to(out_dir)}/)"
            )
    if not sopts.wait:
        if batch.submitted or batch.waited:
            log(
                "not waiting: run the same command again to follow the array(s) and write "
                "grades.csv"
            )
            return batch
    watch(out_dir, opts.progress, log)
    batch.results = [_final(out_dir, s.key, plan, opts.engine) for _, s in plan.jobs]
    atomic_write_text(out_dir / "grades.csv", grades_csv(batch.results))
    return batch


def _final(out_dir: Path, key: str, plan: BatchPlan, engine: str) -> SubmissionResult:
    """A submission's result once every array has ended (written now if it went missing)."""
    if key in plan.reused:
        return plan.reused[key]
    try:
        return read_results_json(out_dir / key / "results.json")
    except (OSError, ValueError, KeyError, TypeError):  # removed or damaged meanwhile
        a, sub = next(job for job in plan.jobs if job[1].key == key)
        e = Entry(key, a.id, str(sub.path), "", plan.ags[a.id], dict(sub.lms))
        res = failure_result(e, TaskEnd.UNKNOWN, engine, a.root)
        write_results_json(res, out_dir / key / "results.json")
        return res


def watch(out_dir: Path, progress: bool, log: Callable[[str], None], poll: float = 1.0) -> None:
    """Follow every open array of ``out_dir`` until each task has ended and been accounted:
    a progress bar from results appearing and the scheduler's states."""
    from tqdm import tqdm

    arrays = open_arrays(out_dir)
    bar = tqdm(total=0, desc="grading (slurm)", unit="nb", disable=not progress, file=sys.stderr)
    unreachable = 0.0
    try:
        while arrays:
            owner = owners(out_dir)  # another command may have submitted meanwhile
            done, total = 0, 0
            counts: dict[str, int] = {}
            still: list[Array] = []
            for arr in arrays:
                live = live_tasks(arr.job_id)
                if live is None:  # the controller did not answer: conclude nothing, ask again
                    if not unreachable:
                        unreachable = time.monotonic()
                        log(f"squeue does not answer for array {arr.job_id}; still asking")
                    still.append(arr)
                    continue
                unreachable = 0.0
                for st in live.values():
                    counts[st.lower()] = counts.get(st.lower(), 0) + 1
                if not account(arr, live, log, owner):
                    still.append(arr)
                out, eng = Path(arr.manifest.output), arr.manifest.engine
                mine = [e for _, e in arr.entries if owner.get(e.key) == arr.folder.name]
                total += len(mine)
                done += sum(1 for e in mine if _result_for(out, e, eng) is not None)
            bar.total = max(bar.total, total)
            bar.update(done - bar.n)
            bar.set_postfix_str(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
            arrays = still
            if arrays:
                time.sleep(poll)
    finally:
        bar.close()


def _dry_run(
    root: Path,
    out_dir: Path,
    plan: BatchPlan,
    opts: GradeOptions,
    sopts: SlurmOptions,
    echo: Callable[[str], None],
) -> SlurmBatch:
    """Print the script and the array that would be submitted; write and submit nothing."""
    if not plan.todo:
        echo(f"nothing to submit: all {len(plan.jobs)} result(s) are up to date")
        return SlurmBatch(None)
    folder = out_dir / STATE_DIR / "<array>"
    m, script = _prepare(root, out_dir, plan, plan.todo, opts, sopts, folder)
    echo(f"# would write {folder}/ (manifest.json, in/, grade.sbatch), then run:")
    echo(f"#   sbatch {folder}/grade.sbatch")
    echo(script)
    echo(
        f"# array 0-{len(m.tasks) - 1}: {len(plan.todo)} submission(s), at most "
        f"{sopts.per_task} per task"
    )
    for i, t in enumerate(m.tasks):
        echo(f"#   task {i}: {' '.join(e.key for e in t)}")
    return SlurmBatch(None)


def main(argv: list[str] | None = None) -> int:
    """``python -m tensorgrade.slurm task MANIFEST INDEX``: what a batch script runs."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[0] != "task" or not args[2].isdigit():
        print("usage: python -m tensorgrade.slurm task MANIFEST INDEX", file=sys.stderr)
        return 2
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return run_task(Path(args[1]), int(args[2]))


if __name__ == "__main__":
    raise SystemExit(main())
