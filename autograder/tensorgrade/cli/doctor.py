"""`tensorgrade doctor`: which isolation layers this machine gives a sandbox."""

from __future__ import annotations

import argparse

from . import options


def doctor(args: argparse.Namespace) -> int:
    from ..judge.doctor import main

    return main(args.json, args.isolation)


def register(sub) -> None:
    dr = options.command(
        sub,
        "doctor",
        doctor,
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
    options.isolation(dr, help="as for `grade`")
