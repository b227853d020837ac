"""The `tensorgrade` command: one parser, one module per command group, errors printed in one
place (``errors.run``). Parsing imports only the standard library and this package's small
modules: torch and otter are imported by the command that needs them, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
from typing import NoReturn

from .. import __version__, errors
from . import audit, build, doctor, grade, gradescope, lms, report

# in the order `tensorgrade --help` lists them
COMMANDS = (
    build.register_build,
    grade.register,
    audit.register_audit,
    audit.register_examples,
    build.register_release,
    doctor.register,
    lms.register_lms,
    lms.register_export,
    report.register,
    gradescope.register,
)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tensorgrade",
        description="Build the student notebooks of a PyTorch course and grade submissions.",
        epilog="Run `tensorgrade COMMAND --help` for the options of each command.",
    )
    p.add_argument("--version", action="version", version=f"tensorgrade {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    return errors.run(lambda: args.func(args))


def entry() -> NoReturn:
    """The ``tensorgrade`` command: ``main()``, then a quick exit.

    Everything a command makes is written and closed by then; what is left is the interpreter's
    teardown of torch, which takes a tenth of a second on a quiet machine and seconds on a busy
    one (measured: 2.6 s at load 7), for every Gradescope submission and Slurm task. So the exit
    handlers run (temporary folders, the zygote's clean end), the streams are flushed, and the
    process ends without the teardown.
    """
    code = main()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    os._exit(code)


if __name__ == "__main__":
    entry()
