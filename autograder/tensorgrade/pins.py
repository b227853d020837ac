"""The torch that a grading environment promises is the torch it imports.

The grading image and Gradescope's setup.sh install the project's pinned torch and record its
version in ``TENSORGRADE_TORCH_VERSION``. A grader that would run on another torch (a base image's
own build, a later `pip install` that upgraded it) stops before grading anything: scores from
another torch are not the scores the course was audited with.
"""

from __future__ import annotations

import os

from . import settings

TORCH_VERSION_ENV = "TENSORGRADE_TORCH_VERSION"


def torch_pin_mismatch() -> str | None:
    """A sentence saying how the imported torch differs from the promised one, or None."""
    want = settings.torch_version()
    if not want:
        return None
    import torch

    have = torch.__version__.split("+")[0]
    if have == want:
        return None
    return (
        f"this environment promises torch {want} ({TORCH_VERSION_ENV}) but imports torch "
        f"{torch.__version__} from {os.path.dirname(torch.__file__)}: rebuild the image or "
        "rerun setup.sh"
    )
