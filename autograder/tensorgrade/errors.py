"""The errors whose message is for the user, and the one place that prints them.

Library code raises a subclass of ``TensorgradeError`` with a sentence that says what is wrong and
what to do; the command line (``tensorgrade.cli.main``) and the ``bench/`` scripts hand it to
``report``, which prints ``error: <message>`` on stderr and returns the class's ``exit_code``:

==================  =========  ==============================================================
class               exit code  meaning
==================  =========  ==============================================================
TensorgradeError    1          the work was tried and failed (a build, a release, a push)
UsageError          2          the command line asks for something that cannot be done
InputError          2          a file or folder the command reads cannot be used as given
NotFoundError       2          something the command needs is missing (a ``FileNotFoundError``)
ConfigError         2          a configuration file (``grading.yml``) is not valid
OutputError         2          where the command must write cannot be written
IncompleteError     3          everything was written, but some work was not done (say why)
==================  =========  ==============================================================

A ``FileNotFoundError`` of the standard library is reported as a ``NotFoundError`` (exit 2). This
module imports nothing beyond the standard library, so every entry point may use it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class TensorgradeError(Exception):
    """An error whose message is for the user; printed as ``error: <message>``."""

    exit_code: int = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # also where a subclass mixes in KeyError, which quotes its text
        return self.message


class UsageError(TensorgradeError):
    """The command line asks for something that cannot be done (an unknown id, a bad value)."""

    exit_code = 2


class InputError(TensorgradeError):
    """A file or folder the command reads cannot be used as given (results, roster, download)."""

    exit_code = 2


class NotFoundError(InputError, FileNotFoundError):
    """Something the command needs is missing (a course, a build, a folder)."""


class ConfigError(InputError):
    """A configuration file is not valid; the message names the file, the key and what it wants."""


class OutputError(TensorgradeError):
    """Where the command must write cannot be written."""

    exit_code = 2


class IncompleteError(TensorgradeError):
    """Everything was written, but some of the work was not done; running again finishes it."""

    exit_code = 3


def message(e: BaseException) -> str:
    """The user's sentence of an error: its message, or for an ``OSError`` what and where."""
    if isinstance(e, TensorgradeError):
        return e.message
    if isinstance(e, OSError) and e.strerror and e.filename:
        return f"{e.filename}: {e.strerror}"
    return str(e.args[-1]) if e.args else str(e)


def report(e: BaseException) -> int:
    """Print ``error: <message>`` on stderr; the exit status for it."""
    print(f"error: {message(e)}", file=sys.stderr)
    return e.exit_code if isinstance(e, TensorgradeError) else 2


def run(command: Callable[[], int | None]) -> int:
    """Run a command's body: its exit status, or the reported error's."""
    try:
        return int(command() or 0)
    except (TensorgradeError, FileNotFoundError) as e:
        return report(e)
