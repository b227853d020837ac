"""Where things live in a course checkout: masters, student notebooks, build output."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import settings
from .errors import NotFoundError, UsageError


def find_root(start: Path | None = None) -> Path:
    """The course root: ``$TENSORGRADE_ROOT`` or the nearest parent holding ``solutions/``."""
    env = settings.course_root()
    if env:
        return Path(env).resolve()
    here = (start or Path.cwd()).resolve()
    for d in [here, *here.parents]:
        if (d / "solutions").is_dir() and (d / "assignments").is_dir():
            return d
    raise NotFoundError(
        f"no course found at or above {here}: expected folders solutions/ and assignments/ "
        "(or set TENSORGRADE_ROOT)"
    )


@dataclass(frozen=True)
class Assignment:
    """One assignment, named by its id (e.g. ``01_tensors``)."""

    id: str
    root: Path

    @property
    def master(self) -> Path:
        return self.root / "solutions" / self.id / f"{self.id}.ipynb"

    @property
    def mutants(self) -> Path:
        return self.root / "solutions" / self.id / "mutants.yml"

    @property
    def student_dir(self) -> Path:
        return self.root / "assignments" / self.id

    @property
    def student(self) -> Path:
        return self.student_dir / f"{self.id}.ipynb"

    @property
    def dist(self) -> Path:
        return self.root / "dist" / self.id

    @property
    def solution(self) -> Path:
        """The built solution notebook (what a perfect student would submit)."""
        return self.dist / "solution" / f"{self.id}.ipynb"

    @property
    def autograder_zip(self) -> Path:
        return self.dist / "autograder.zip"

    @property
    def tests_dir(self) -> Path:
        """The built test files, public and hidden (instructor side only)."""
        return self.dist / "tests"


def all_assignments(root: Path) -> list[Assignment]:
    ids = sorted(
        p.name for p in (root / "solutions").iterdir() if (p / f"{p.name}.ipynb").is_file()
    )
    return [Assignment(i, root) for i in ids]


def get_assignments(root: Path, ids: list[str] | None) -> list[Assignment]:
    """The named assignments (all when none are named); unknown ids are an error that lists the known."""
    known = {a.id: a for a in all_assignments(root)}
    if not ids:
        return list(known.values())
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise UsageError(
            f"unknown assignment id(s): {', '.join(unknown)}; known: {', '.join(known) or 'none'}"
        )
    return [known[i] for i in ids]
