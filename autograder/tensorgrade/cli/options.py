"""What every command and ``bench/`` script shares: how a command is added, and the options that
mean the same everywhere (assignment ids, -o/--output, -j/--jobs, --engine, --isolation, -q,
RESULTS, --root). Only the standard library is imported here: ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

Handler = Callable[[argparse.Namespace], "int | None"]
ENGINES = ("trusted", "otter")
ISOLATIONS = ("full", "reduced")


def command(
    subparsers: Any,
    name: str,
    handler: Handler | None,
    help: str,
    description: str,
    epilog: str | None = None,
) -> argparse.ArgumentParser:
    """Add the command ``name``; ``handler(args)`` runs it (None: it has subcommands)."""
    p = subparsers.add_parser(name, help=help, description=description, epilog=epilog)
    if handler is not None:
        p.set_defaults(func=handler)
    return p


def subcommands(p: argparse.ArgumentParser, dest: str, metavar: str = "COMMAND") -> Any:
    """The subcommands of a command group (one must be named)."""
    return p.add_subparsers(dest=dest, metavar=metavar, required=True)


def script_parser(doc: str | None) -> argparse.ArgumentParser:
    """The parser of a ``bench/`` script: its docstring, as written, is its help."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)


def assignment_ids(p: argparse.ArgumentParser) -> None:
    p.add_argument("ids", nargs="*", metavar="ID", help="assignment ids (default: all)")


def assignment_id(p: argparse.ArgumentParser, default: str | None = None) -> None:
    """One assignment id: required, or optional with ``default``."""
    if default is None:
        p.add_argument("id", metavar="ID", help="assignment id")
    else:
        p.add_argument("id", metavar="ID", nargs="?", default=default, help=f"default: {default}")


def output(
    p: argparse.ArgumentParser,
    help: str,
    *,
    default: Path | None = None,
    required: bool = False,
    metavar: str | None = None,
) -> None:
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=default,
        required=required,
        metavar=metavar,
        help=help,
    )


def jobs(p: Any, default: int, help: str = "submissions graded at once") -> None:
    p.add_argument("-j", "--jobs", type=int, default=default, help=help)


def engine(p: argparse.ArgumentParser, help: str | None = None) -> None:
    p.add_argument("--engine", choices=list(ENGINES), default="trusted", help=help)


def isolation(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--isolation", choices=list(ISOLATIONS), default="full", help=help)


def gpu_slots(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--gpu-slots", type=int, default=0, metavar="N", help=help)


def quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def repeats(p: argparse.ArgumentParser, default: int, help: str = "runs of each") -> None:
    """How often a ``bench/`` script repeats what it measures (it reports the median)."""
    p.add_argument("--repeats", type=int, default=default, help=help)


def results(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("results", type=Path, metavar="RESULTS", help=help)


def root(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--root", type=Path, help=help)


def course_assignments(ids: list[str] | None) -> tuple[Path, list]:
    """The course root and the named assignments (all when none are named)."""
    from ..course import find_root, get_assignments

    course = find_root()
    return course, get_assignments(course, ids)
