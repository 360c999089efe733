"""A `redis-server` of the tests' own: Debian's, on 127.0.0.1 (a free port, and a Unix socket)
in a private directory, with nothing saved and eviction off, stopped by its PID. Where it is not
installed, the test that asks for one skips, saying why.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server")
START_TIMEOUT_S = 10.0
NOT_INSTALLED = "redis-server is not installed: apt-get install -y redis-server"

needs_redis_server = pytest.mark.skipif(REDIS_SERVER is None, reason=NOT_INSTALLED)
"""For a test that starts a server of its own (a skip inside a trio test loses its reason)."""


class RedisServer:
    """A `redis-server` of our own; `settings` are its command-line options over ours."""

    def __init__(self, directory: Path, *settings: str) -> None:
        if REDIS_SERVER is None:
            pytest.skip(NOT_INSTALLED)
        self.directory = directory
        self.socket = directory / "redis.sock"
        with socket.socket() as probe:  # a free port: bound, read, let go
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--unixsocket", str(self.socket),
                "--unixsocketperm", "700",
                "--dir", str(directory),
                "--save", "",
                "--appendonly", "no",
                # Debian's packaged redis.conf says nothing of eviction, but a managed Redis may.
                "--maxmemory-policy", "noeviction",
                "--daemonize", "no",
                "--logfile", str(directory / "redis.log"),
                *settings,
            ],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        self._wait_for_ping()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket}?db=1"

    def _wait_for_ping(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")
                pytest.fail(f"redis-server exited with {self.process.returncode}:\n{log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        self.stop()
        pytest.fail(f"redis-server did not answer PING within {START_TIMEOUT_S} s")

    def stop(self) -> None:
        """SIGTERM to its PID, SIGKILL if it has not gone within 5 s."""
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def unique_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}:"
