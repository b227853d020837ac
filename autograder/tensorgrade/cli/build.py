"""`tensorgrade build` and `tensorgrade release`: what the course's masters turn into."""

from __future__ import annotations

import argparse
import sys
import time

from ..errors import NotFoundError
from . import options


def build(args: argparse.Namespace) -> int:
    from ..build import build_one, stale_files, write_student
    from ..config import check_assignment
    from ..gradescope import write_gradescope_zip

    root, assignments = options.course_assignments(args.ids)
    if not assignments:
        raise NotFoundError(f"no master notebooks under {root / 'solutions'}")
    for a in assignments:  # a bad grading.yml stops the build, never a batch
        check_assignment(a)
    stale_all = []
    for a in assignments:
        t0 = time.monotonic()
        built = build_one(a, write_dist=not args.check)
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


def release(args: argparse.Namespace) -> int:
    from ..release import make_release, output_path, write_folder, write_release_zip

    root, assignments = options.course_assignments(args.ids)
    output_path(args.output, root, args.zip)  # refuse a wrong OUTPUT before building anything
    made = make_release(root, assignments, title=args.title)
    write = write_release_zip if args.zip else write_folder
    out = write(made, args.output, root)
    for note in made.notes:
        print(f"note: {note}", file=sys.stderr)
    print(
        f"wrote the student release of {', '.join(made.assignments)} to {out} "
        f"({len(made.files)} files, no solutions, no hidden tests): publish it as the "
        "students' repository (see docs/release.md)"
    )
    return 0


def register_release(sub) -> None:
    rl = options.command(
        sub,
        "release",
        release,
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
    options.assignment_ids(rl)
    options.output(rl, "folder (or zip) to write", required=True)
    rl.add_argument(
        "--zip",
        action="store_true",
        help="write OUTPUT as a zip file (.zip added if missing), its files in one folder",
    )
    rl.add_argument("--title", default="Course notebooks", help="heading of the students' README")


def register_build(sub) -> None:
    b = options.command(
        sub,
        "build",
        build,
        help="make student notebooks and autograder bundles from the masters",
        description=(
            "Run otter assign on each master notebook solutions/<id>/<id>.ipynb. Writes the "
            "student notebook to assignments/<id>/ (commit it) and the solution notebook, test "
            "files, autograder.zip and gradescope.zip (upload it to Gradescope; it holds the "
            "hidden tests) to dist/<id>/ (build output, not committed). Builds are "
            "byte-identical when nothing changed. Each solutions/<id>/grading.yml is checked "
            "first."
        ),
    )
    options.assignment_ids(b)
    b.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 and name the files if committed student notebooks are stale",
    )
