"""Byte-reproducible zip files: the same members always give the same bytes.

Zip entries carry timestamps, permissions and an order; fixing all three means a rebuild that
changed nothing changes no byte, so a checksum of the zip identifies its content.
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from pathlib import Path

FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold
FILE_MODE = 0o644
EXEC_MODE = 0o755


def write_zip(
    path: Path, members: dict[str, bytes], executable: frozenset[str] | set[str] = frozenset()
) -> Path:
    """Write ``members`` (archive name -> content) to ``path``, sorted, with fixed metadata.

    Names in ``executable`` get mode 0755 (scripts a grading service runs), all others 0644.
    The file is replaced atomically, so a reader never sees half a zip.
    """
    unknown = set(executable) - set(members)
    if unknown:
        raise ValueError(f"executable names not among the members: {', '.join(sorted(unknown))}")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # Unix, so that the mode below is honoured by unzip
            mode = EXEC_MODE if name in executable else FILE_MODE
            info.external_attr = (0o100000 | mode) << 16
            z.writestr(info, members[name], compresslevel=9)
    _atomic_write(Path(path), buf.getvalue())
    return Path(path)


def normalise_zip(path: Path) -> None:
    """Rewrite an existing zip (e.g. otter's autograder bundle) in the reproducible form above,
    keeping each member's executable bit."""
    with zipfile.ZipFile(path) as z:
        infos = [i for i in z.infolist() if not i.is_dir()]
        members = {i.filename: z.read(i) for i in infos}
        executable = {i.filename for i in infos if (i.external_attr >> 16) & 0o111}
    write_zip(path, members, executable)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
