"""The only language spoken across the trust boundary: data, framed, without pickle.

A message is a JSON header plus one binary blob holding tensor bytes. Decoding is strict: size
caps, a dtype allowlist, shapes checked against byte counts, bounded nesting, and tensors rebuilt
as plain ``torch.Tensor`` objects by the receiver's own torch. Anything else cannot be expressed.
"""

from __future__ import annotations

import json
import math
import os
import struct
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
        if self.portable_type is not None and isinstance(x, self.portable_type):
            self.portables.append(x)
            return {
                "__portable__": x.name,
                "id": len(self.portables) - 1,
                "params": self.enc(dict(x.params), depth + 1),
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
    def __init__(self, blob: bytes, device_map: dict[str, str] | None = None, portable=None):
        self.blob = blob
        self.device_map = device_map or {}
        self.portable = portable  # callable(name, params, id) -> object, or None (refuse)
        self.elements = 0

    def dec(self, x: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise WireError("nesting too deep")
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        if isinstance(x, list) or not isinstance(x, dict) or len(x) == 0:
            raise WireError("malformed value")
        key = next(iter(x))
        val = x[key]
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
            if not (isinstance(val, str) and len(val) < 400):
                raise WireError("malformed integer")
            return int(val)
        if key == "__dtype__":
            if val not in DTYPES:
                raise WireError(f"dtype {val!r} is not allowed")
            return DTYPES[val]
        if key == "__device__":
            if not isinstance(val, str) or len(val) > 20:
                raise WireError("malformed device")
            return torch.device(val)
        if key == "__portable__" and self.portable is not None:
            params = self.dec(x.get("params"), depth + 1)
            return self.portable(val, params, x.get("id"))
        raise WireError(f"unknown value kind {key!r}")

    def tensor(self, spec: Any) -> torch.Tensor:
        if not isinstance(spec, dict):
            raise WireError("malformed tensor")
        dtype = DTYPES.get(spec.get("dtype"))
        shape, off, n = spec.get("shape"), spec.get("offset"), spec.get("nbytes")
        if dtype is None:
            raise WireError(f"tensor dtype {spec.get('dtype')!r} is not allowed")
        if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)):
            raise WireError("malformed tensor shape")
        if len(shape) > 16 or not (isinstance(off, int) and isinstance(n, int)):
            raise WireError("malformed tensor")
        numel = math.prod(shape)
        itemsize = torch.empty((), dtype=dtype).element_size()
        if numel * itemsize != n or off < 0 or off + n > len(self.blob):
            raise WireError("tensor bytes do not match its shape")
        self.elements += numel
        if numel == 0:
            t = torch.empty(shape, dtype=dtype)
        else:
            raw = bytearray(self.blob[off : off + n])
            t = torch.frombuffer(raw, dtype=dtype).reshape(shape).clone()
        device = self.device_map.get(spec.get("device"), "cpu")
        return t.to(device) if device != "cpu" else t


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
    header = json.loads(read(hlen))
    if not isinstance(header, dict):
        raise WireError("malformed message")
    return header, read(blen)
