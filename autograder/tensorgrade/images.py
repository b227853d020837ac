"""Checking a PNG a student's code produced before it is kept or shown.

A PNG's header declares its size; a browser allocates width x height x 4 bytes to show it, so a
few hundred bytes declaring 40000 x 40000 pixels cost a reader's browser gigabytes. Only images
with a well-formed header and a modest declared size are kept.
"""

from __future__ import annotations

import struct

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_SIDE = 4096  # pixels
MAX_PIXELS = 4_000_000  # a 2000 x 2000 figure; matplotlib's default at 72 dpi is 432 x 288


def png_dimensions(raw: bytes) -> tuple[int, int] | None:
    """(width, height) from the IHDR chunk, which must come first; None if not a PNG."""
    if len(raw) < 33 or not raw.startswith(PNG_SIGNATURE):
        return None
    length, kind = struct.unpack(">I4s", raw[8:16])
    if kind != b"IHDR" or length != 13:
        return None
    return struct.unpack(">II", raw[16:24])


def acceptable_png(raw: bytes) -> bool:
    """A PNG whose declared size a browser can show without harm."""
    dims = png_dimensions(raw)
    if dims is None:
        return False
    w, h = dims
    return 0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE and w * h <= MAX_PIXELS
