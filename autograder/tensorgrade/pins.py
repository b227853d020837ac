"""The torch that a grading environment promises is the torch it imports.

The grading image and Gradescope's setup.sh install the project's pinned torch and record its
version in ``TENSORGRADE_TORCH_VERSION``. A grader that would run on another torch (a base image's
own build, a later `pip install` that upgraded it) stops before grading anything: scores from
another torch are not the scores the course was audited with.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

from . import settings

TORCH_VERSION_ENV = "TENSORGRADE_TORCH_VERSION"


def torch_pin_mismatch() -> str | None:
    """A sentence saying how the torch that would be imported differs from the promised one, or
    None."""
    want = settings.torch_version()
    if not want:
        return None
    version, folder = importable_torch()
    if version.split("+")[0] == want:
        return None
    return (
        f"this environment promises torch {want} ({TORCH_VERSION_ENV}) but imports torch "
        f"{version or '(none)'} from {folder or 'nowhere'}: rebuild the image or rerun setup.sh"
    )


def importable_torch() -> tuple[str, str]:
    """The version and folder of the torch that ``import torch`` loads here, read from its
    ``version.py`` without importing it: the check comes before the grader imports torch (while
    the zygote imports its own), and an import costs a second or more."""
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        return str(torch.__version__), os.path.dirname(str(torch.__file__))
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return "", ""
    folder = list(spec.submodule_search_locations)[0]
    try:
        text = Path(folder, "version.py").read_text()
    except OSError:
        return "", folder
    found = re.search(r"^__version__\s*(?::\s*str\s*)?=\s*['\"]([^'\"]+)['\"]", text, re.M)
    return (found.group(1) if found else ""), folder
