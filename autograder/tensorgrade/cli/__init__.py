"""The `tensorgrade` command: one parser, one module per command group, errors printed in one
place (``errors.run``). Parsing imports only the standard library and this package's small
modules: torch and otter are imported by the command that needs them, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse

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


if __name__ == "__main__":
    raise SystemExit(main())
