"""`tensorgrade gradescope run|zip`: the Gradescope autograder, and the zip to upload."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from . import options

DEFAULT_ROOT = "/autograder"  # as gradescope.DEFAULT_ROOT (not imported: --help stays instant)


def zip_command(args: argparse.Namespace) -> int:
    from ..gradescope import write_gradescope_zip

    _, assignments = options.course_assignments(args.ids)
    if args.output and len(assignments) != 1:
        raise UsageError("--output needs exactly one assignment id")
    for a in assignments:
        path = write_gradescope_zip(a, args.output)
        print(f"{a.id}: wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return 0


def run_command(args: argparse.Namespace) -> int:
    from ..gradescope import run

    if args.root is not None and not args.root.is_dir():
        raise UsageError(f"--root {args.root} is not a directory")
    return run(args.root)


def register(subparsers) -> None:
    """`tensorgrade gradescope run|zip`."""
    p = options.command(
        subparsers,
        "gradescope",
        None,
        help="grade one submission inside Gradescope's container, or write gradescope.zip",
        description="Gradescope autograder: grade one submission inside Gradescope's container "
        "(run: what the zip's run_autograder calls), or write the autograder zip to upload (zip).",
    )
    sub = options.subcommands(p, "gradescope_command")
    r = options.command(
        sub,
        "run",
        run_command,
        help="grade /autograder/submission, write /autograder/results/results.json",
        description=(
            "What run_autograder calls. Finds the one notebook in ROOT/submission, grades it "
            "with the trusted engine against the course in ROOT/source (the unpacked zip) and "
            "writes ROOT/results/results.json. Exit 0 whenever a result was written (also when "
            "the student's code fails or no notebook was submitted), 1 when the autograder "
            "itself failed, 2 on bad arguments."
        ),
    )
    options.root(
        r, f"the autograder directory (default: $TENSORGRADE_AUTOGRADER_ROOT, else {DEFAULT_ROOT})"
    )
    z = options.command(
        sub,
        "zip",
        zip_command,
        help="write dist/<id>/gradescope.zip for built assignments",
        description=(
            "Write the zip to upload on Gradescope's 'Configure Autograder' page: setup.sh, "
            "run_autograder, tensorgrade's source and the built tests (hidden ones included: "
            "keep the zip away from students). Needs `tensorgrade build` first."
        ),
    )
    options.assignment_ids(z)
    options.output(z, "zip path (one assignment only)")
