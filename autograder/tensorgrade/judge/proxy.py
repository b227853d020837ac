"""Stand-ins for the student's names: calling one sends data to the sandbox and gets data back."""

from __future__ import annotations

from typing import Any

from .. import wire
from ..portable import Portable
from .sandbox import SandboxDied, SandboxTimeout


class StudentError(Exception):
    """The student's code raised, timed out, crashed, or returned something that is not data.

    ``brief`` is what hidden tests show: the student's own exception text could carry hidden
    inputs out to the student, so hidden feedback names only the exception type.
    """

    def __init__(self, message: str, brief: str | None = None):
        super().__init__(message)
        self.brief = brief or message


class Proxy:
    """The student's object ``path`` (e.g. ``SoftThreshold.apply``) inside the sandbox."""

    def __init__(self, session: Any, path: str):
        self._session = session
        self._path = path

    def __getattr__(self, attr: str) -> Proxy:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return Proxy(self._session, f"{self._path}.{attr}")

    def __repr__(self) -> str:
        return f"<student's {self._path}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._request("call", {"args": args, "kwargs": kwargs})

    def __tg_vjp__(self, primals: tuple, cotangents: tuple) -> Any:
        return self._request("vjp", {"primals": primals, "cotangents": cotangents})

    def __tg_jvp__(self, primals: tuple, tangents: tuple) -> Any:
        return self._request("jvp", {"primals": primals, "tangents": tangents})

    def __tg_source__(self) -> str:
        name = self._path.split(".")[0]
        src = self._session.definition_source(name)
        if src is None:
            raise StudentError(f"no definition of {name} found in the notebook")
        return src

    def _request(self, op: str, value: dict) -> Any:
        s = self._session
        try:
            header, blob, portables = s.sandbox.request(
                {"op": op, "path": self._path, "value": value},
                timeout=s.limits.call_timeout,
                portable_type=Portable,
            )
        except SandboxTimeout:
            s.restart_needed = f"{self._path} did not return within {s.limits.call_timeout:g} s"
            raise StudentError(s.restart_needed) from None
        except SandboxDied as e:
            s.restart_needed = f"the process ended while running {self._path}: {e}"
            raise StudentError(s.restart_needed) from None
        except wire.WireError as e:
            raise StudentError(f"{self._path}: the answer could not be read ({e})") from None
        if not header.get("ok"):
            err = str(header.get("error", "an error"))
            kind = err.split(":", 1)[0][:80]
            raise StudentError(f"{self._path} raised {err}"[:1500], f"{self._path} raised {kind}")
        try:
            value = wire.Decoder(blob, device_map={"cpu": "cpu", "cuda": "cuda"}).dec(
                header.get("value")
            )
        except (wire.WireError, RuntimeError) as e:
            raise StudentError(f"{self._path} returned something that is not data ({e})") from None
        calls = header.get("portable_calls", {})
        if isinstance(calls, dict):
            for k, n in calls.items():
                if str(k).isdigit() and int(k) < len(portables) and isinstance(n, int):
                    portables[int(k)].calls += max(0, n)
        return value
