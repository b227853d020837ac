"""A private single-node Slurm cluster for the tests: Debian's daemons, started directly.

Everything lives in one work folder (config, state, spool, logs, munge's key and socket), the
ports are picked free, and munge runs as its own daemon with its own key and socket: the cluster
neither needs nor touches ``/etc/slurm`` or the machine's munged, and another cluster on the same
machine does not see it. Daemons are stopped by the PIDs this module started (jobs are cancelled
first: ``slurmstepd`` outlives ``slurmd``). Facts behind the settings: ``/work/shared/notes/slurm.md``.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")


def missing() -> str:
    """What this machine lacks to run the cluster ("" when nothing)."""
    if os.geteuid() != 0:
        return "the test cluster runs its daemons as root"
    for exe in (*(f"/usr/sbin/{d}" for d in DAEMONS), *CLIENTS):
        if shutil.which(exe) is None:
            return f"{exe} not found (apt-get install slurmctld slurmd slurm-client munge)"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no user 'munge' (Debian's munge package creates it)"
    return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_hardware() -> dict[str, int]:
    """What ``slurmd -C`` reports for this machine (CPUs, sockets, cores, memory)."""
    out = subprocess.run(["/usr/sbin/slurmd", "-C"], capture_output=True, text=True).stdout
    found = dict(re.findall(r"(\w+)=(\d+)", out.splitlines()[0]))
    keys = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")
    return {k: int(found[k]) for k in keys if k in found}


@dataclass
class Cluster:
    """A running cluster; ``env`` is what a client (or a grader) needs to reach it."""

    workdir: Path
    conf: Path
    name: str
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    start_seconds: float = 0.0  # from nothing to an idle node
    remove: bool = False  # the work folder is this module's own: removed by ``stop``

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, check=check)

    def jobs(self) -> list[str]:
        """Ids of the jobs (array tasks one by one) this cluster still holds."""
        out = self.run("squeue", "-h", "-r", "-o", "%i", check=False).stdout
        return out.split()

    def log(self, name: str) -> str:
        p = self.workdir / "log" / f"{name}.log"
        return p.read_text(errors="replace") if p.is_file() else ""

    def stop(self) -> None:
        """Cancel every job, wait for them to leave, then end each daemon by its PID."""
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            if self.jobs():
                self.run("scancel", "--quiet", *self.jobs(), check=False)
            deadline = time.monotonic() + 30
            while self.jobs() and time.monotonic() < deadline:
                time.sleep(0.5)
        for name in reversed(DAEMONS):
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        if self.remove:
            shutil.rmtree(self.workdir, ignore_errors=True)


def start(workdir: Path | None = None, timeout: float = 60.0) -> Cluster:
    """Write the config into ``workdir`` (default: a new folder under the system's temp folder,
    removed by ``stop``), start munged, slurmctld and slurmd, and return once the node is idle
    (stopping whatever started if it never becomes so). Every folder above ``workdir`` must let
    others through: munged runs as the munge user (pytest's own temp folders do not)."""
    t0 = time.monotonic()
    own = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="tensorgrade-slurm-") if workdir is None else workdir)
    for d in ("state", "spool", "log", "run"):
        (workdir / d).mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o755)  # jobs of other users must reach the spool (execve of the script)
    for d in ("state", "spool", "log", "run"):
        os.chmod(workdir / d, 0o755)
    name = "tg" + secrets.token_hex(4)
    cluster = Cluster(workdir, workdir / "slurm.conf", name, remove=own)
    munge = _munge_dir(workdir)
    hw = _node_hardware()
    memory = int(hw.pop("RealMemory", 2048) * 0.95)
    node = " ".join(f"{k}={v}" for k, v in hw.items())
    cpus = hw.get("CPUs", 1)
    conf = f"""\
# written by tests/slurmcluster.py: a private single-node cluster
ClusterName={name}
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge / "munge.socket"}
StateSaveLocation={workdir / "state"}
SlurmdSpoolDir={workdir / "spool"}
SlurmctldPidFile={workdir / "run" / "slurmctld.pid"}
SlurmdPidFile={workdir / "run" / "slurmd.pid"}
SlurmctldLogFile={workdir / "log" / "slurmctld.log"}
SlurmdLogFile={workdir / "log" / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU={max(256, memory // cpus // 2)}
EnforcePartLimits=ALL
SchedulerParameters=batch_sched_delay=0
MpiDefault=none
MailProg=/bin/true
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={workdir / "log" / "jobcomp.txt"}
JobAcctGatherType=jobacct_gather/none
MinJobAge=900
ReturnToService=2
NodeName=localhost NodeAddr=127.0.0.1 {node} RealMemory={memory} State=UNKNOWN
PartitionName=main Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""
    cluster.conf.write_text(conf)
    os.chmod(cluster.conf, 0o644)
    env = cluster.env
    try:
        cluster.procs["munged"] = _spawn(
            [
                "setpriv", "--reuid=munge", "--regid=munge", "--clear-groups",
                "/usr/sbin/munged", "--foreground", "--force",
                f"--socket={munge / 'munge.socket'}", f"--key-file={munge / 'munge.key'}",
                f"--pid-file={munge / 'munged.pid'}", f"--log-file={munge / 'munged.log'}",
                f"--seed-file={munge / 'munged.seed'}",
            ],
            workdir / "log" / "munged.out",
            env,
        )  # fmt: skip
        _wait(lambda: (munge / "munge.socket").exists(), cluster, "munged", t0 + timeout)
        cluster.procs["slurmctld"] = _spawn(
            ["/usr/sbin/slurmctld", "-D", "-i", "-f", str(cluster.conf)],
            workdir / "log" / "slurmctld.out",
            env,
        )
        cluster.procs["slurmd"] = _spawn(
            ["/usr/sbin/slurmd", "-D", "-N", "localhost", "-f", str(cluster.conf)],
            workdir / "log" / "slurmd.out",
            env,
        )
        _wait(lambda: _idle(cluster), cluster, "the node to be idle", t0 + timeout)
    except BaseException:
        cluster.stop()
        raise
    cluster.start_seconds = time.monotonic() - t0
    return cluster


def _munge_dir(workdir: Path) -> Path:
    """munged's own folder, owned by the munge user, with a fresh key of this cluster's."""
    pw = pwd.getpwnam("munge")
    d = workdir / "munge"
    d.mkdir(mode=0o700, exist_ok=True)
    key = d / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    os.chmod(key, 0o600)
    for p in (d, key):
        os.chown(p, pw.pw_uid, pw.pw_gid)
    os.chmod(d, 0o755)  # clients (root here, any user on a cluster) connect to the socket
    return d


def _spawn(cmd: list[str], out: Path, env: dict[str, str]) -> subprocess.Popen:
    with out.open("ab") as f:
        return subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, env=env
        )


def _idle(cluster: Cluster) -> bool:
    proc = cluster.run("sinfo", "-h", "-N", "-o", "%T", check=False)
    return proc.returncode == 0 and proc.stdout.strip() in ("idle", "idle*")


def _wait(ready, cluster: Cluster, what: str, deadline: float) -> None:
    while not ready():
        dead = [n for n, p in cluster.procs.items() if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            why = f"{', '.join(dead)} exited" if dead else "timed out"
            logs = "\n".join(
                f"--- {n}:\n{(cluster.workdir / 'log' / f'{n}.out').read_text(errors='replace')}"
                f"{cluster.log(n)[-3000:]}"
                for n in cluster.procs
                if (cluster.workdir / "log" / f"{n}.out").is_file()
            )
            raise RuntimeError(f"the test cluster did not start ({why} waiting for {what})\n{logs}")
        time.sleep(0.2)
