"""The environment variables tensorgrade reads: each named, documented and read here, only here.

``VARIABLES`` lists every one, with who reads it and what it means; docs/grading.md has the same
table (a test keeps the two in step). The accessors below read the environment when called, not
at import: a grading worker sets ``CUDA_VISIBLE_DEVICES`` for itself after it started, and tests
set variables for one call.

Building the environment handed *to* a child process (the zygote's, otter's kernel's) is not
reading a setting: ``judge/sandbox.py`` and ``otter_engine.py`` copy what the child needs, and
this module only says which values tensorgrade itself acts on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Variable:
    name: str
    read_by: str  # "grader": this package; "scripts": setup.sh, run_autograder, the notebooks
    default: str  # as the documentation shows it
    description: str


VARIABLES = (
    Variable(
        "TENSORGRADE_ROOT",
        "grader",
        "the nearest folder holding solutions/ and assignments/",
        "the course root (the grading image and Slurm tasks set it)",
    ),
    Variable(
        "TENSORGRADE_TORCH_VERSION",
        "grader",
        "unset: not checked",
        "the torch version this environment promises; `grade` and `gradescope run` refuse "
        "another (set by the grading image and run_autograder)",
    ),
    Variable(
        "TENSORGRADE_AUTOGRADER_ROOT",
        "grader",
        "/autograder",
        "where `gradescope run` finds submission/, source/ and results/ (tests)",
    ),
    Variable(
        "OMP_NUM_THREADS",
        "grader",
        "1",
        "CPU threads of each sandbox, of otter's kernels and of each grading worker's own torch",
    ),
    Variable(
        "CUDA_VISIBLE_DEVICES",
        "grader",
        "unset: every GPU nvidia-smi lists",
        "the GPUs --gpu-slots shares out; a worker sets it to its one GPU, which its results "
        "record",
    ),
    Variable(
        "CUDA_MPS_PIPE_DIRECTORY",
        "grader",
        "/tmp/nvidia-mps",
        "the CUDA MPS pipe folder a sandbox may reach",
    ),
    Variable(
        "PYTHONPATH",
        "grader",
        "unset",
        "its folders are readable in the sandbox (and passed to the zygote)",
    ),
    Variable(
        "LD_LIBRARY_PATH",
        "grader",
        "unset",
        "its folders (GPU driver libraries) are readable in the sandbox (and passed to the zygote)",
    ),
    Variable(
        "CANVAS_API_TOKEN",
        "grader",
        "unset",
        "`lms canvas push`: the Canvas API token, when --token-file is not given",
    ),
    Variable(
        "CANVAS_API_URL",
        "grader",
        "unset",
        "`lms canvas push`: the Canvas base URL, when --url is not given",
    ),
    Variable(
        "TENSORGRADE_PYTHON",
        "scripts",
        "/opt/tensorgrade/venv/bin/python",
        "run_autograder (Gradescope): the interpreter that grades (tests)",
    ),
    Variable(
        "TENSORGRADE_TORCH_INDEX",
        "scripts",
        "https://download.pytorch.org/whl/cpu",
        "setup.sh (Gradescope): the package index of torch's CPU wheels (a mirror)",
    ),
    Variable(
        "TENSORGRADE_RELEASE_URL",
        "scripts",
        "the notebook's release_url",
        "a student notebook's set-up cell: the course release to fetch (to try one before "
        "publishing it)",
    ),
)


def _get(name: str) -> str | None:
    assert any(v.name == name and v.read_by == "grader" for v in VARIABLES), name
    return os.environ.get(name)


def course_root() -> str:
    """``TENSORGRADE_ROOT``, or "" (then the course is searched for from the working folder)."""
    return _get("TENSORGRADE_ROOT") or ""


def torch_version() -> str:
    """The torch version this environment promises, or "" (nothing promised)."""
    return (_get("TENSORGRADE_TORCH_VERSION") or "").strip()


def autograder_root() -> str:
    """``TENSORGRADE_AUTOGRADER_ROOT``, or "" (Gradescope's /autograder)."""
    return _get("TENSORGRADE_AUTOGRADER_ROOT") or ""


def threads() -> str:
    """CPU threads of one sandbox, kernel or worker: one, so that --jobs N uses N cores."""
    return _get("OMP_NUM_THREADS") or "1"


def visible_devices() -> str | None:
    """``CUDA_VISIBLE_DEVICES`` as set (None: not set, every GPU is visible)."""
    return _get("CUDA_VISIBLE_DEVICES")


def mps_pipe_directory() -> str:
    return _get("CUDA_MPS_PIPE_DIRECTORY") or "/tmp/nvidia-mps"


def search_paths(name: str) -> list[str]:
    """The folders of a path variable (``PYTHONPATH``, ``LD_LIBRARY_PATH``)."""
    return [p for p in (_get(name) or "").split(os.pathsep) if p]


def canvas_token() -> str:
    return (_get("CANVAS_API_TOKEN") or "").strip()


def canvas_url() -> str:
    return _get("CANVAS_API_URL") or ""


def markdown_table() -> str:
    """The table of docs/grading.md: every variable, who reads it, its default, its meaning."""
    rows = ["| variable | read by | default | meaning |", "|---|---|---|---|"]
    for v in VARIABLES:
        rows.append(f"| `{v.name}` | {v.read_by} | {v.default} | {v.description} |")
    return "\n".join(rows)
