"""Shared by the tests that need a real Docker engine (test_docker.py, test_image.py)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading

import pytest


def require_docker() -> None:
    """Skip without a Docker engine; fail instead where CI promises one
    (TENSORGRADE_REQUIRE_DOCKER=1, set by .ci/run after it starts dockerd)."""
    exe = shutil.which("docker")
    if exe:
        proc = subprocess.run([exe, "info"], capture_output=True, text=True, timeout=60)
        why = "" if proc.returncode == 0 else f"no docker engine: {proc.stderr.strip()[-200:]}"
    else:
        why = "no docker client"
    if why:
        if os.environ.get("TENSORGRADE_REQUIRE_DOCKER"):
            pytest.fail(why)
        pytest.skip(why)


def docker(*args: str, timeout: float = 900, check: bool = False) -> subprocess.CompletedProcess:
    """``docker ARGS``, output captured as text."""
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"docker {' '.join(args[:3])}...: {proc.stderr[-3000:]}"
    return proc


class LoopbackListener:
    """A TCP port on 127.0.0.1 that counts the connections it accepts: a sandbox that reached it
    had a network. Bounded: it stops when closed, or by itself after ``lifetime`` seconds."""

    def __init__(self, lifetime: float = 1800) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(lifetime,), daemon=True)
        self._thread.start()

    def _serve(self, lifetime: float) -> None:
        timer = threading.Timer(lifetime, self._stop.set)
        timer.daemon = True
        timer.start()
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            self.accepted += 1
            conn.close()
        timer.cancel()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()
