"""The only language spoken across the trust boundary: data, framed, without pickle.

A message is a JSON header plus one binary blob holding tensor bytes. Decoding is strict: size
caps, a dtype allowlist, shapes checked against byte counts, bounded nesting, and tensors rebuilt
as plain ``torch.Tensor`` objects by the receiver's own torch. Anything else cannot be expressed.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import struct
from dataclasses import dataclass
from typing import Any

import torch

MAX_HEADER = 4 * 1024 * 1024
MAX_BLOB = 512 * 1024 * 1024
MAX_DEPTH = 32

DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "complex128": torch.complex128,
    "complex64": torch.complex64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


class WireError(ValueError):
    """A message that is malformed, too large, or holds something that is not plain data."""


@dataclass(frozen=True)
class RemoteFunction:
    """A function that stays with the judge, sent as an opaque handle: ``{"__remote__": token}``.

    The sandbox can only ask the judge to evaluate it (``protocol.Eval``); its parameters never
    cross the boundary, and the judge counts every evaluation itself.
    """

    token: int
    name: str


class _Encoder:
    def __init__(self, portable_type: type | None = None):
        self.blobs: list[bytes] = []
        self.size = 0
        self.portables: list[Any] = []
        self.portable_type = portable_type

    def enc(self, x: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise WireError("nesting too deep")
        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, int):
            return x if abs(x) < 2**62 else {"__bigint__": str(x)}
        if isinstance(x, float):
            return x if math.isfinite(x) else {"__float__": repr(x)}
        if isinstance(x, torch.Tensor):
            return self.tensor(x)
        if isinstance(x, torch.dtype):
            if x not in _DTYPE_NAMES:
                raise WireError(f"dtype {x} is not allowed")
            return {"__dtype__": _DTYPE_NAMES[x]}
        if isinstance(x, torch.device):
            return {"__device__": str(x)}
        if isinstance(x, tuple):
            return {"__tuple__": [self.enc(v, depth + 1) for v in x]}
        if isinstance(x, list):
            return {"__list__": [self.enc(v, depth + 1) for v in x]}
        if isinstance(x, dict):
            if not all(isinstance(k, str) for k in x):
                raise WireError("dict keys must be strings")
            return {"__dict__": [[k, self.enc(v, depth + 1)] for k, v in x.items()]}
        if isinstance(x, RemoteFunction):
            return {"__remote__": x.token, "name": x.name}
        if self.portable_type is not None and isinstance(x, self.portable_type):
            self.portables.append(x)
            p: Any = x  # a portable object (portable.py): a name and its parameters
            return {
                "__portable__": p.name,
                "id": len(self.portables) - 1,
                "params": self.enc(dict(p.params), depth + 1),
            }
        raise WireError(
            f"a value of type {type(x).__name__} cannot be graded: use tensors, numbers, "
            "strings, None, and lists, tuples or dicts of these"
        )

    def tensor(self, t: torch.Tensor) -> dict:
        if t.dtype not in _DTYPE_NAMES:
            raise WireError(f"tensors of dtype {t.dtype} cannot be graded")
        if t.is_sparse or t.layout != torch.strided:
            raise WireError("only dense tensors can be graded")
        device = t.device.type
        data = torch.Tensor.contiguous(torch.Tensor.detach(t)).cpu()
        if data.is_conj():
            data = data.resolve_conj()
        raw = data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b""
        if self.size + len(raw) > MAX_BLOB:
            raise WireError("the result is too large to send back")
        off = self.size
        self.blobs.append(raw)
        self.size += len(raw)
        shape = [int(s) for s in data.shape]
        dtype = _DTYPE_NAMES[data.dtype]
        return {
            "__tensor__": {
                "dtype": dtype,
                "shape": shape,
                "offset": off,
                "nbytes": len(raw),
                "device": device,
            }
        }


def encode(header: dict, portable_type: type | None = None) -> tuple[bytes, list]:
    """Frame a message; returns the bytes and the Portable objects it mentions (by id)."""
    enc = _Encoder(portable_type)
    body = {k: (enc.enc(v) if k == "value" else v) for k, v in header.items()}
    text = json.dumps(body, allow_nan=False).encode()
    if len(text) > MAX_HEADER:
        raise WireError("message header too large")
    blob = b"".join(enc.blobs)
    return struct.pack(">QQ", len(text), len(blob)) + text + blob, enc.portables


class Decoder:
    """Rebuilds a value from its JSON form and the blob of tensor bytes, refusing anything odd.

    Every tensor owns its own byte range of the blob: ranges may not overlap (else a small answer
    could name the same bytes a thousand times and make the receiver allocate a thousand copies),
    so what is decoded never exceeds the blob's length, nor ``max_bytes`` where given.
    """

    def __init__(
        self,
        blob: bytes,
        device_map: dict[str, str] | None = None,
        portable=None,
        *,
        remote=None,
        max_bytes: int | None = None,
    ):
        self.blob = blob
        self.device_map = device_map or {}
        self.portable = portable  # callable(name, params, id) -> object, or None (refuse)
        self.remote = remote  # callable(token, name) -> object, or None (refuse)
        self.max_bytes = len(blob) if max_bytes is None else min(max_bytes, len(blob))
        self.elements = 0
        self.decoded = 0  # tensor bytes rebuilt so far
        self._starts: list[int] = []  # sorted starts of the byte ranges taken so far
        self._ends: dict[int, int] = {}

    def dec(self, x: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise WireError("nesting too deep")
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        if isinstance(x, list) or not isinstance(x, dict) or len(x) == 0:
            raise WireError("malformed value")
        key = next(iter(x))
        val = x[key]
        if len(x) != 1 and key not in ("__portable__", "__remote__"):
            raise WireError("malformed value")
        if key == "__tensor__":
            return self.tensor(val)
        if key == "__tuple__":
            return tuple(self.dec(v, depth + 1) for v in _list(val))
        if key == "__list__":
            return [self.dec(v, depth + 1) for v in _list(val)]
        if key == "__dict__":
            out = {}
            for item in _list(val):
                if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
                    raise WireError("malformed dict")
                out[item[0]] = self.dec(item[1], depth + 1)
            return out
        if key == "__float__":
            if val not in ("nan", "inf", "-inf"):
                raise WireError("malformed float")
            return float(val)
        if key == "__bigint__":
            if not (isinstance(val, str) and 0 < len(val) < 400):
                raise WireError("malformed integer")
            try:
                return int(val)
            except ValueError:
                raise WireError("malformed integer") from None
        if key == "__dtype__":
            if not isinstance(val, str) or val not in DTYPES:
                raise WireError("a dtype that is not allowed")
            return DTYPES[val]
        if key == "__device__":
            if not isinstance(val, str) or len(val) > 20:
                raise WireError("malformed device")
            try:
                return torch.device(val)
            except (RuntimeError, ValueError):
                raise WireError("malformed device") from None
        if key == "__portable__" and self.portable is not None:
            params = self.dec(x.get("params"), depth + 1)
            return self.portable(val, params, x.get("id"))
        if key == "__remote__" and self.remote is not None:
            name = x.get("name")
            if not (isinstance(val, int) and isinstance(name, str) and len(x) == 2):
                raise WireError("malformed remote function")
            return self.remote(val, name)
        raise WireError("an unknown kind of value")

    def tensor(self, spec: Any) -> torch.Tensor:
        if not isinstance(spec, dict):
            raise WireError("malformed tensor")
        name = spec.get("dtype")
        dtype = DTYPES.get(name) if isinstance(name, str) else None
        shape, off, n = spec.get("shape"), spec.get("offset"), spec.get("nbytes")
        if dtype is None:
            raise WireError("a tensor dtype that is not allowed")
        if not (
            isinstance(shape, list) and all(isinstance(s, int) and 0 <= s < 2**48 for s in shape)
        ):
            raise WireError("malformed tensor shape")
        if len(shape) > 16 or not (isinstance(off, int) and isinstance(n, int)):
            raise WireError("malformed tensor")
        numel = math.prod(shape)
        itemsize = torch.empty((), dtype=dtype).element_size()
        if numel * itemsize != n or off < 0 or off + n > len(self.blob):
            raise WireError("tensor bytes do not match its shape")
        self._take(off, n)
        self.elements += numel
        if numel == 0:
            try:
                t = torch.empty(shape, dtype=dtype)
            except RuntimeError:
                raise WireError("malformed tensor shape") from None
        else:  # the tensor owns its copy of its bytes (one copy, never shared)
            t = torch.frombuffer(bytearray(self.blob[off : off + n]), dtype=dtype).reshape(shape)
        device = self.device_map.get(str(spec.get("device")), "cpu")
        if device == "cpu":
            return t
        try:
            return t.to(device)
        except RuntimeError:  # e.g. a CUDA tensor where this process has no GPU
            raise WireError(f"no {device} device here") from None

    def _take(self, off: int, n: int) -> None:
        """Claim bytes [off, off + n) of the blob for one tensor: no overlap, bounded total."""
        if n == 0:
            return
        i = bisect.bisect_right(self._starts, off)
        if i > 0 and self._ends[self._starts[i - 1]] > off:
            raise WireError("tensors share bytes")
        if i < len(self._starts) and self._starts[i] < off + n:
            raise WireError("tensors share bytes")
        if self.decoded + n > self.max_bytes:
            raise WireError("the tensors are larger than the message allows")
        self._starts.insert(i, off)
        self._ends[off] = off + n
        self.decoded += n


def _list(v: Any) -> list:
    if not isinstance(v, list):
        raise WireError("malformed list")
    return v


def read_exact(fd: int, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        b = os.read(fd, min(n - got, 1 << 20))
        if not b:
            raise EOFError("pipe closed")
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def split_frame(read: Any) -> tuple[dict, bytes]:
    """Read one frame with ``read(n)`` (which enforces timeouts); return header and blob."""
    hlen, blen = struct.unpack(">QQ", read(16))
    if hlen > MAX_HEADER or blen > MAX_BLOB:
        raise WireError("message too large")
    try:
        header = json.loads(read(hlen))
    except (ValueError, RecursionError):  # bad JSON, bad UTF-8, a number too long, too deep
        raise WireError("malformed message") from None
    if not isinstance(header, dict):
        raise WireError("malformed message")
    return header, read(blen)
