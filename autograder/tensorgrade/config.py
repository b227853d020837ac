"""An assignment's grading configuration: ``solutions/<id>/grading.yml``, checked when it is read.

Every field of ``Limits`` carries its unit, its bounds and a description (dataclass field
metadata); ``load`` refuses an unknown key, a value of the wrong type and a value out of bounds,
naming the file, the key and what it expects. ``tensorgrade build`` and ``audit`` load every
assignment's file first and a batch loads them before grading anything, so a bad file never stops
a batch halfway. docs/grading.md shows ``markdown_table()`` (a test keeps the two equal).

The bounds lie within what the zygote accepts of a sandbox (``protocol.SandboxLimits.parse``),
so a file that loads here is never refused there (a test checks both ends).
"""

from __future__ import annotations

from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

FILE_NAME = "grading.yml"


def _limit(default: float, unit: str, lo: float, hi: float, description: str) -> Any:
    return field(default=default, metadata={"unit": unit, "min": lo, "max": hi, "doc": description})


@dataclass
class Limits:
    """Per-assignment limits of the trusted engine (``solutions/<id>/grading.yml`` overrides)."""

    cell_timeout: float = _limit(60.0, "s", 1, 86_400, "wall time of one cell of the notebook")
    call_timeout: float = _limit(
        30.0, "s", 1, 86_400, "wall time of one call of a student's function by a test"
    )
    submission_timeout: float = _limit(
        600.0,
        "s",
        1,
        1_000_000,
        "wall time of the whole submission, cells and tests; also its CPU-time limit (+5 s)",
    )
    startup_timeout: float = _limit(
        60.0,
        "s",
        1,
        3_600,
        "for the sandbox to start and take the assignment's data files (each time it starts)",
    )
    memory_mb: int = _limit(
        6144,
        "MiB",
        256,
        1 << 26,
        "address space of the sandbox; not applied where a GPU is present (CUDA needs a huge "
        "address space: use the container's memory limit there)",
    )
    processes: int = _limit(512, "count", 8, 1 << 16, "processes and threads of the sandbox's uid")
    file_mb: int = _limit(64, "MiB", 1, 1 << 20, "largest file the student's code may write")
    tmpfs_mb: int = _limit(
        1024,
        "MiB",
        1,
        1 << 20,
        "all files together (workdir, /tmp, /dev/shm): a size-capped tmpfs with a private root, "
        "else a watchdog on the on-disk workdir",
    )
    stdout_chars: int = _limit(20_000, "characters", 0, 1 << 24, "printed output kept per cell")
    max_restarts: int = _limit(
        8, "count", 0, 1_000, "sandbox crashes during the tests before the rest are not run"
    )

    @classmethod
    def from_dict(cls, d: Any, source: str = FILE_NAME) -> Limits:
        """Checked limits from a mapping (a loaded YAML file); ``source`` names it in errors."""
        if d is None:
            d = {}
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a mapping of limits, got {_kind(d)}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(str(k) for k in d if k not in known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}"
            )
        checked: dict[str, Any] = {k: _checked(known[k], v, source) for k, v in d.items()}
        return cls(**checked)


def _kind(v: Any) -> str:
    return "nothing" if v is None else f"{type(v).__name__} {v!r}"


def _checked(f: Field, v: Any, source: str) -> float | int:
    lo, hi, unit = f.metadata["min"], f.metadata["max"], f.metadata["unit"]
    is_int = f.type in (int, "int")
    what = "a whole number" if is_int else "a number"
    ok_type = isinstance(v, int) if is_int else isinstance(v, int | float)
    if not ok_type or isinstance(v, bool) or not lo <= v <= hi:
        unit_text = "" if unit == "count" else f" {unit}"
        raise ConfigError(
            f"{source}: {f.name}: expected {what} from {_num(lo)} to {_num(hi)}{unit_text}, "
            f"got {_kind(v)}"
        )
    return v if is_int else float(v)


def load(path: Path) -> Limits:
    """The limits of ``path`` (the defaults where it does not exist); ConfigError if invalid."""
    if not path.is_file():
        return Limits()
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return Limits.from_dict(data, str(path))


def path_of(a: Any) -> Path:
    """Where an assignment's grading configuration lives: next to its master notebook."""
    return Path(a.master).parent / FILE_NAME


def load_assignment(a: Any) -> Limits:
    """An assignment's limits (``a``: a ``course.Assignment``)."""
    return load(path_of(a))


def check_assignment(a: Any) -> None:
    """Raise ConfigError if the assignment's grading.yml is not valid (build and audit time)."""
    load_assignment(a)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def default_text(f: Field) -> str:
    assert f.default is not MISSING
    return _num(f.default)


def markdown_table() -> str:
    """The table of docs/grading.md: name, unit, default, bounds, description."""
    rows = ["| field | unit | default | bounds | description |", "|---|---|---|---|---|"]
    for f in fields(Limits):
        m = f.metadata
        bounds = f"{_num(m['min'])} to {_num(m['max'])}"
        rows.append(f"| `{f.name}` | {m['unit']} | {default_text(f)} | {bounds} | {m['doc']} |")
    return "\n".join(rows)
