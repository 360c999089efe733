"""What every hostile-input test stands on: the server as a real process, its memory, the
sentinel call that must not notice the attack, raw bytes on the wire, and the figures reported.

The server runs as `callbox serve` in a subprocess, as in production, so that its memory can
be read from /proc and its log (stderr) searched for tracebacks; it is started once per test
module and stopped by its process id.
"""

from __future__ import annotations

import itertools
import os
import re
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any

import attrs
import orjson
import trio
from hypothesis import HealthCheck, settings
from websockets.frames import Close, Frame, Opcode

from callbox.config import environment_variables
from tests.hostile.sentinel import Report
from tests.server.test_transport import RawClient
from tests.server.wsclient import Client, Wire, connect

ROOT = Path(__file__).resolve().parents[2]
HANG_GUARD_S = 10.0
"""Longest any single wait of these tests may take before it counts as a hang."""

# -- limits the server runs with ---------------------------------------------------------------

MAX_MESSAGE_BYTES = 64 * 1024
MESSAGES_PER_SECOND = 200
"""Sustained rate per connection: above the sentinel's 100/s, so only attackers hit it."""
MESSAGE_BURST = 200
HELLO_TIMEOUT_MS = 1000
SERVER_ENV = {
    "MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES),
    "MESSAGES_PER_SECOND": str(MESSAGES_PER_SECOND),
    "MESSAGE_BURST": str(MESSAGE_BURST),
    "RECONNECT_GRACE_MS": "500",  # attackers' sessions end soon after they hang up
    "HEARTBEAT_MS": "5000",
    "HELLO_TIMEOUT_MS": str(HELLO_TIMEOUT_MS),
}
"""Small limits, so that crossing them is cheap. A setting this server does not know yet (it
refuses unknown settings only under CALLBOX_, but would warn) is left out by `server_env`."""

# -- what the guard asserts around every attack --------------------------------------------------

MAX_STALL_MS = 1000.0
"""No sentinel candidate may take longer than this from its send to its arrival: a freeze (the
ones issue 10 fixed took seconds). Issue 10's target, 100 ms, is a timing: the worst stall is
printed at the end of the run (16-31 ms on an idle 2-core machine), but a machine busy with
other work stalls the sentinel for ~200 ms without any fault of the server's, so it is not
asserted here."""
PEAK_RSS_SLACK_KIB = 96 * 1024
"""The server's RSS during an attack stays below its baseline (right after start-up) plus this.
The attacks that try to pin memory (headers, fragments) would each take hundreds of MiB."""
AFTER_RSS_SLACK_KIB = 16 * 1024
"""Once an attack's connections are gone, the RSS returns to within this of where the test
started (CPython keeps some freed memory in its arenas, hence not exactly)."""
SETTLE_S = 5.0
"""How long the RSS is given to come back down after an attack."""


def server_env() -> dict[str, str]:
    known = {variable.name for variable in environment_variables()}
    env = {name: value for name, value in SERVER_ENV.items() if name in known}
    return {**os.environ, **env}


# -- the server process --------------------------------------------------------------------------


class ServerProcess:
    """`callbox serve --port 0` with its stderr in a file; `stop` ends it by its process id."""

    LISTENING = re.compile(r"callbox listening on (ws://\S+)")

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._log_file = log_path.open("wb")
        command = [sys.executable, "-m", "callbox", "serve", "--port", "0"]
        self.process = subprocess.Popen(
            command, stderr=self._log_file, stdout=subprocess.DEVNULL, env=server_env(), cwd=ROOT
        )
        self.pid = self.process.pid
        self.url = self._wait_for_url()
        host, port = self.url.removeprefix("ws://").split("/")[0].rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.baseline_kib = self.rss_kib()

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + HANG_GUARD_S
        while time.monotonic() < deadline:
            if (match := self.LISTENING.search(self.log())) is not None:
                return match.group(1)
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"the server did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_kib(self) -> int:
        """The server's resident set (VmRSS), in KiB."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        [value] = re.findall(r"^VmRSS:\s+(\d+) kB$", status, re.MULTILINE)
        return int(value)

    def stop(self) -> int:
        """SIGTERM (its graceful shutdown), then SIGKILL if it has not exited in time."""
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(HANG_GUARD_S)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait(HANG_GUARD_S)
        self._log_file.close()
        return self.process.returncode


class RssSampler:
    """Samples the server's RSS every `PERIOD_S` in a thread while an attack runs; `peak_kib`."""

    PERIOD_S = 0.02

    def __init__(self, server: ServerProcess) -> None:
        self._server = server
        self._stop = threading.Event()
        self.peak_kib = server.rss_kib()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.PERIOD_S):
            self.peak_kib = max(self.peak_kib, self._server.rss_kib())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(HANG_GUARD_S)
        return self.peak_kib


def settled_rss_kib(server: ServerProcess, bound_kib: int) -> int:
    """The server's RSS once it is within `bound_kib`, or after `SETTLE_S` if it never is."""
    deadline = time.monotonic() + SETTLE_S
    while (rss := server.rss_kib()) > bound_kib and time.monotonic() < deadline:
        time.sleep(0.1)
    return rss


# -- the sentinel --------------------------------------------------------------------------------


@contextmanager
def sentinel_call(url: str, tag: str) -> Iterator[list[Report]]:
    """Runs the sentinel (tests/hostile/sentinel.py) for the duration of the block; the list it
    yields holds its `Report` afterwards. Stopped by its process id if it does not finish."""
    command = [sys.executable, "-m", "tests.hostile.sentinel", url, tag]
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=os.environ,
        text=True,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    reports: list[Report] = []
    try:
        ready, _, _ = select.select([process.stdout], [], [], HANG_GUARD_S)
        line = process.stdout.readline() if ready else ""
        if line != "ready\n":
            os.kill(process.pid, signal.SIGKILL)
            _, err = process.communicate(timeout=HANG_GUARD_S)
            raise AssertionError(f"the sentinel did not start: {line!r}\n{err}")
        yield reports
        out, err = process.communicate("stop\n", timeout=HANG_GUARD_S)
        assert out, f"the sentinel failed before its report:\n{err}"
        reports.append(Report(**orjson.loads(out.splitlines()[0])))
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(HANG_GUARD_S)


# -- figures for the terminal summary -----------------------------------------------------------


@attrs.define
class AttackFigures:
    test: str
    sentinel: Report
    rss_before_kib: int
    rss_peak_kib: int
    rss_after_kib: int


@attrs.define
class Figures:
    """What the suite measured, printed at the end of the run (see conftest.py)."""

    inputs: Counter[str] = attrs.field(factory=Counter)
    attacks: list[AttackFigures] = attrs.field(factory=list)
    baselines_kib: list[int] = attrs.field(factory=list)
    tracebacks: int = 0

    def count(self, layer: str, inputs: int = 1) -> None:
        self.inputs[layer] += inputs


FIGURES = Figures()


# -- hypothesis --------------------------------------------------------------------------------

NETWORK = settings(
    deadline=None,  # one example is a few round trips to another process: no stable deadline
    database=None,
    print_blob=True,
    # The guard fixture is per test on purpose: the sentinel spans all of a test's examples.
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
"""Settings of the property tests that attack the running server; each sets max_examples."""


# -- raw bytes on the wire -----------------------------------------------------------------------


def raw_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    length: int | None = None,
) -> bytes:
    """One WebSocket frame as a client would put it on the wire, without any of the checks
    websockets' `Frame.serialize` makes: any opcode, reserved bits, unmasked, or a declared
    `length` that differs from the payload's."""
    size = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv & 0x7) << 4 | (opcode & 0xF)])
    mask_bit = 0x80 if mask else 0
    if size < 126:
        head += bytes([mask_bit | size])
    elif size < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", size)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def ws_client(server: ServerProcess) -> RawClient:
    """A WebSocket connection to the server, handshake done, no hello sent."""
    with trio.fail_after(HANG_GUARD_S):
        return await RawClient.connect(server.port)


async def send_raw(client: RawClient, data: bytes) -> None:
    """Send bytes the client protocol knows nothing of; the server may already have gone."""
    with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await client.stream.send_all(data)


async def frames_until_close(client: RawClient) -> tuple[Close | None, list[Frame]]:
    """The server's frames up to and including its close frame (or EOF), then the socket is
    closed: the close code (None if the server just dropped TCP) and the data frames before."""
    frames: list[Frame] = []
    try:
        with trio.fail_after(HANG_GUARD_S):
            while batch := await receive_frames(client):
                for frame in batch:
                    if frame.opcode is Opcode.CLOSE:
                        return Close.parse(frame.data), frames
                    frames.append(frame)
        return None, frames
    finally:
        await client.stream.aclose()


async def receive_until(client: RawClient, done: Callable[[list[Frame]], bool]) -> list[Frame]:
    """The server's frames until `done` says so of all received, or the connection ends."""
    frames: list[Frame] = []
    with trio.fail_after(HANG_GUARD_S):
        while not done(frames) and (batch := await receive_frames(client)):
            frames += batch
    return frames


async def receive_frames(client: RawClient) -> list[Frame]:
    """`RawClient.receive`, where a reset counts as the end of the stream."""
    try:
        return await client.receive()
    except trio.BrokenResourceError:
        return []


def texts(frames: list[Frame]) -> list[dict[str, Any]]:
    """The JSON messages among `frames`."""
    return [orjson.loads(f.data) for f in frames if f.opcode is Opcode.TEXT]


async def http_exchange(server: ServerProcess, request: bytes) -> bytes:
    """Send `request` on a fresh TCP connection and read until the server closes it; what a
    reset leaves unread is lost (the caller sees it as a missing status)."""
    stream = await trio.open_tcp_stream(server.host, server.port)
    response = b""

    async def send() -> None:
        # The server may answer and stop reading before the request's end.
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(request)

    try:
        with trio.fail_after(HANG_GUARD_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                try:
                    while chunk := await stream.receive_some():
                        response += chunk
                except trio.BrokenResourceError:
                    pass
                nursery.cancel_scope.cancel()
    finally:
        await stream.aclose()
    return response


STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]*\r\n")


def status_of(response: bytes) -> int | None:
    match = STATUS_LINE.match(response)
    return None if match is None else int(match.group(1))


# -- protocol-level attackers ------------------------------------------------------------------


@asynccontextmanager
async def attacker(server: ServerProcess, user_id: str | None) -> AsyncIterator[Client]:
    """A protocol client (tests/server/wsclient.py, which checks every server message against
    the schemas and the `seq` numbering), signed in as `user_id` unless it is None."""
    with trio.fail_after(HANG_GUARD_S):
        async with connect(server.url, user_id) as client:
            yield client


_probes = itertools.count()


def as_text(message: Wire) -> str:
    """`message` as the text frame a client sends (bytes would go as a binary frame)."""
    return orjson.dumps(message).decode()


async def answers_to(client: Client, frame: str) -> list[Wire]:
    """Send `frame`, then a `ping`; everything the server sent in between: its answers to the
    frame. (A rate-limited ping ends the wait as well: its `error` proves the connection up.)"""
    rid = f"probe-{next(_probes)}"
    await client.ws.send_message(frame)
    await client.send({"type": "ping", "ts": 0, "rid": rid})
    replies: list[Wire] = []
    with trio.fail_after(HANG_GUARD_S):
        while (reply := await client.receive()).get("rid") != rid:
            replies.append(reply)
    assert reply["type"] == "pong" or reply.get("code") == "rate_limited", reply
    return replies
