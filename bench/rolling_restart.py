"""A rolling restart of a cluster under traffic, and nothing lost: issue 13's drain proof.

    .venv/bin/python bench/rolling_restart.py [--calls 20] [--rate 10] [--nodes 3]

Starts a ``redis-server`` of its own (127.0.0.1, a free port, a temporary directory, nothing
saved, ``noeviction``) and ``--nodes`` plain ``callbox serve --redis`` nodes on it. ``--calls``
pairs of `callbox.client` clients (``reconnect=True``, every node's URL, each pair's caller and
callee starting on different nodes) set up a call each and relay numbered ``ice_candidate``s to
each other, ``--rate`` per second per call, half each way, each side from its own task while
another reads.

Then each node in turn gets SIGTERM: it drains (closes its listeners, sends 1012 to every client,
detaches their sessions in Redis and exits 0), is started again on the same port, and once its
``/healthz`` answers 200 and ``--settle`` seconds have passed, the next one goes. At the end the
senders stop, every client waits until it has read all its peer sent, the callers hang up and
everyone says ``bye``. `Outcome` holds what the checks need: calls ended early, sessions lost,
messages skipped, repeated or unread, every drained node's exit status, the close codes the
clients followed, and each resume's time from the SIGTERM of its node to its ``welcome``.

tests/cluster/test_rolling_restart.py runs `rolling_restart` against a Redis of the test's own
and asserts the outcome; this script prints it. Every process started is stopped by its PID.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import trio
from chaos import TimedClient, quantile
from run_relay_bench import HOST, free_port

from callbox.client import ConnectionClosed, ProtocolViolation, SessionLost
from callbox.messages import (
    CallAccepted,
    CallEnded,
    CallIncoming,
    CallRinging,
    RelayedIceCandidate,
)

START_TIMEOUT_S = 20.0
DRAIN_WAIT_S = 15.0
"""How long a drained node may take to exit (its own bound is 10 s) before it is killed."""
PHASE_TIMEOUT_S = 30.0
"""The longest any phase (set-up, the restarts' resumes, draining the traffic) may take."""


# Nodes ------------------------------------------------------------------------------------------


@dataclass
class Node:
    """A plain ``callbox serve --redis`` process on a port of its own, kept across restarts."""

    index: int
    port: int
    redis_url: str
    directory: Path
    process: trio.Process | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"ws://{HOST}:{self.port}/ws"

    async def start(self) -> None:
        """Start it and wait until `/healthz` answers 200 (its lease renewed: it serves)."""
        self.starts += 1
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CALLBOX_", "JWT_"))}
        env["CALLBOX_REDIS_URL"] = self.redis_url
        log = self.directory / f"node-{self.index}.{self.starts}.log"
        command = [sys.executable, "-m", "callbox", "serve", "--host", HOST, "--port"]
        with log.open("wb") as out:
            self.process = await trio.lowlevel.open_process(
                [*command, str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        with trio.fail_after(START_TIMEOUT_S):
            while not await healthy(self.port):
                if self.process.returncode is not None:
                    raise RuntimeError(f"node {self.index} exited: {log.read_text()}")
                await trio.sleep(0.05)

    async def drain(self) -> int:
        """SIGTERM to its PID; its exit status (SIGKILL after `DRAIN_WAIT_S`: -9)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(DRAIN_WAIT_S):
            return await self.process.wait()
        self.process.kill()
        return await self.process.wait()

    def kill(self) -> None:
        """SIGKILL to its PID if it still runs (the end of a run, whatever happened)."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()

    def logs(self) -> str:
        return "".join(
            p.read_text(errors="replace") for p in self.directory.glob(f"node-{self.index}.*")
        )


async def healthy(port: int) -> bool:
    """Whether `GET /healthz` on `port` answers 200."""
    try:
        stream = await trio.open_tcp_stream(HOST, port)
    except OSError:
        return False
    async with stream:
        try:
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = await stream.receive_some()
        except (trio.BrokenResourceError, OSError):
            return False
    return answer.startswith(b"HTTP/1.1 200")


# Clients ----------------------------------------------------------------------------------------


@dataclass
class Side:
    """One party of a call: what it sent, and what it read of its peer's numbered messages."""

    user: str
    urls: list[str]
    client: TimedClient | None = None
    sent: int = 0
    read: int = 0
    duplicates: int = 0
    skipped: int = 0
    ended: list[str] = field(default_factory=list)
    """The reasons of the `call_ended`s it read."""
    errors: list[str] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    def seen(self, count: int) -> None:
        if count <= self.read:
            self.duplicates += 1
        else:
            self.skipped += count - self.read - 1
            self.read = count
        self.notify()

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


@dataclass
class Pair:
    index: int
    caller: Side
    callee: Side

    @property
    def call_id(self) -> str:
        return f"rolling-{self.index:04d}"


@dataclass
class Outcome:
    """What a rolling restart did (see the module's docstring)."""

    calls: int
    sent: int = 0
    read: int = 0
    duplicates: int = 0
    skipped: int = 0
    unread: int = 0
    ended_early: list[str] = field(default_factory=list)
    """"user: reason" of every `call_ended` read before the hang-ups."""
    sessions_lost: int = 0
    errors: list[str] = field(default_factory=list)
    exit_statuses: list[int] = field(default_factory=list)
    """Each drained node's, in the order they were drained."""
    close_codes: Counter[int | None] = field(default_factory=Counter)
    """The close codes of the connections the clients followed to another node."""
    resume_s: list[float] = field(default_factory=list)
    """Per session on a drained node: seconds from its SIGTERM to the session resumed."""
    not_resumed: int = 0
    """Sessions on a drained node that had not resumed when the next node was drained."""

    def report(self) -> str:
        lines = [
            f"{self.calls} calls, {self.sent:,} numbered messages sent, {self.read:,} read;"
            f" duplicated {self.duplicates}, skipped {self.skipped}, unread {self.unread}",
            f"calls ended before the hang-ups: {len(self.ended_early)}; sessions lost:"
            f" {self.sessions_lost}; errors: {len(self.errors)}",
            f"nodes drained, exit statuses: {self.exit_statuses}; close codes followed:"
            f" {dict(self.close_codes)}",
        ]
        if self.resume_s:
            lines.append(
                f"resumed {len(self.resume_s)} sessions, from SIGTERM: p50"
                f" {quantile(self.resume_s, 0.5) * 1000:.0f} ms, p99"
                f" {quantile(self.resume_s, 0.99) * 1000:.0f} ms, max"
                f" {max(self.resume_s) * 1000:.0f} ms; not resumed {self.not_resumed}"
            )
        lines += [f"  {error}" for error in self.errors[:10]]
        return "\n".join(lines)


class CloseCodes(logging.Handler):
    """Counts the close codes the clients followed, from `callbox.client`'s INFO line
    ("connection to URL closed (CODE): URL resumed the session")."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(logging.INFO)
        self.outcome = outcome

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if isinstance(args, tuple) and str(record.msg).startswith("connection to"):
            code = args[1]
            self.outcome.close_codes[code if isinstance(code, int) else None] += 1


async def read(pair: Pair, side: Side, hanging_up: trio.Event) -> None:
    """Reads `side`'s messages until cancelled, checking the peer's counters."""
    client = side.client
    assert client is not None
    while True:
        try:
            message = await client.receive()
        except SessionLost as lost:
            side.errors.append(f"{side.user}: session lost: {lost}")
            side.notify()
            continue
        except (ProtocolViolation, ConnectionClosed) as broken:
            side.errors.append(f"{side.user}: {type(broken).__name__}: {broken}")
            side.notify()
            return
        if isinstance(message, RelayedIceCandidate) and message.candidate is not None:
            side.seen(int(str(message.candidate["candidate"]).split()[1]))
        elif isinstance(message, CallEnded) and message.call_id == pair.call_id:
            side.ended.append(message.reason)
            if not hanging_up.is_set():
                side.errors.append(f"{side.user}: call ended early: {message.reason}")
            side.notify()
        else:
            side.errors.append(f"{side.user}: unexpected {message.TYPE}")


async def send(pair: Pair, side: Side, peer: Side, period: float, stop: trio.Event) -> None:
    """Sends `side`'s numbered candidates every `period` seconds until `stop`."""
    client = side.client
    assert client is not None
    next_at = trio.current_time() + period * (pair.index % 10) / 10
    while True:
        with trio.move_on_at(next_at):
            await stop.wait()
        if stop.is_set():
            return
        next_at = max(next_at + period, trio.current_time())
        count = side.sent + 1
        candidate = {"candidate": f"candidate:1 {count} udp 1 127.0.0.1 9 typ host", "sdpMid": "0"}
        try:
            await client.candidate(pair.call_id, peer.user, candidate)
        except (SessionLost, ProtocolViolation, ConnectionClosed) as broken:
            side.errors.append(f"{side.user}: sending: {type(broken).__name__}: {broken}")
            return
        side.sent = count


async def until_read(side: Side, peer: Side) -> None:
    while side.read < peer.sent and not side.errors:
        await side.changed.wait()


async def until_ended(side: Side) -> None:
    while not side.ended and not side.errors:
        await side.changed.wait()


async def run_pair(
    pair: Pair, ready: trio.Semaphore, stop: trio.Event, done: trio.Semaphore, rate: float
) -> None:
    """`pair`'s life: connect, call, relay until `stop`, drain, hang up, bye."""
    hanging_up = trio.Event()
    async with trio.open_nursery() as nursery:
        for side in pair.caller, pair.callee:
            side.client = await TimedClient.open(
                nursery, side.urls, user_id=side.user, reconnect=True
            )  # type: ignore[assignment]
        caller, callee = pair.caller.client, pair.callee.client
        assert caller is not None and callee is not None
        await caller.initiate([pair.callee.user], call_id=pair.call_id)
        await caller.expect(CallRinging, call_id=pair.call_id)
        await callee.expect(CallIncoming, call_id=pair.call_id)
        await callee.answer(pair.call_id)
        await caller.expect(CallAccepted, call_id=pair.call_id)
        await callee.expect(CallAccepted, call_id=pair.call_id)
        async with trio.open_nursery() as readers:
            for side in pair.caller, pair.callee:
                readers.start_soon(read, pair, side, hanging_up)
            ready.release()
            period = 2.0 / rate
            async with trio.open_nursery() as senders:
                senders.start_soon(send, pair, pair.caller, pair.callee, period, stop)
                senders.start_soon(send, pair, pair.callee, pair.caller, period, stop)
            with trio.move_on_after(PHASE_TIMEOUT_S):
                await until_read(pair.caller, pair.callee)
                await until_read(pair.callee, pair.caller)
            hanging_up.set()
            await caller.hangup(pair.call_id)
            with trio.move_on_after(PHASE_TIMEOUT_S):
                await until_ended(pair.caller)
                await until_ended(pair.callee)
            readers.cancel_scope.cancel()  # before the byes, whose closes they would read
        for client in caller, callee:
            with trio.move_on_after(5):
                await client.aclose()
        nursery.cancel_scope.cancel()
    done.release()


async def rolling_restart(
    redis_url: str,
    directory: Path,
    *,
    calls: int = 20,
    rate: float = 10.0,
    nodes: int = 3,
    settle_s: float = 2.0,
) -> Outcome:
    """Start `nodes` nodes on `redis_url`, set up `calls` calls relaying `rate` messages/s
    each, drain and restart every node in turn, then end the calls; what happened."""
    cluster = [Node(n, free_port(), redis_url, directory) for n in range(nodes)]
    outcome = Outcome(calls)
    logger = logging.getLogger("callbox.client")
    handler = CloseCodes(outcome)
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    urls = [node.url for node in cluster]
    pairs = [
        Pair(
            n,
            Side(f"caller-{n}", urls[n % nodes :] + urls[: n % nodes]),
            Side(f"callee-{n}", urls[(n + 1) % nodes :] + urls[: (n + 1) % nodes]),
        )
        for n in range(calls)
    ]
    sides = [side for pair in pairs for side in (pair.caller, pair.callee)]
    try:
        for node in cluster:
            await node.start()
        ready, done = trio.Semaphore(0), trio.Semaphore(0)
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for pair in pairs:
                nursery.start_soon(run_pair, pair, ready, stop, done, rate)
            with trio.fail_after(PHASE_TIMEOUT_S):
                for _ in pairs:
                    await ready.acquire()
            await trio.sleep(settle_s)
            for node in cluster:
                on_it = [side for side in sides if side.client and side.client.url == node.url]
                drained_at = trio.current_time()
                outcome.exit_statuses.append(await node.drain())
                await node.start()
                with trio.move_on_after(PHASE_TIMEOUT_S):
                    for side in on_it:
                        while side.client and not resumed_since(side, drained_at):
                            await side.client.welcomed.wait()
                for side in on_it:
                    welcome_at = resumed_since(side, drained_at)
                    if welcome_at is None:
                        outcome.not_resumed += 1
                    else:
                        outcome.resume_s.append(welcome_at - drained_at)
                await trio.sleep(settle_s)
            stop.set()
            with trio.fail_after(3 * PHASE_TIMEOUT_S):
                for _ in pairs:
                    await done.acquire()
    finally:
        logger.removeHandler(handler)
        for node in cluster:
            node.kill()
    for pair in pairs:
        for side, peer in (pair.caller, pair.callee), (pair.callee, pair.caller):
            outcome.sent += peer.sent
            outcome.read += side.read
            outcome.duplicates += side.duplicates
            outcome.skipped += side.skipped
            outcome.unread += max(0, peer.sent - side.read)
            outcome.errors += side.errors
            outcome.sessions_lost += sum("session lost" in error for error in side.errors)
            outcome.ended_early += [e for e in side.errors if "call ended early" in e]
    return outcome


def resumed_since(side: Side, since: float) -> float | None:
    """When `side`'s session was first resumed after `since` (trio's clock), if it was."""
    client = side.client
    assert client is not None
    return next((at for at, w in client.welcomes if at > since and w.resumed), None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20, help="calls relaying (2 clients each)")
    parser.add_argument("--rate", type=float, default=10.0, help="messages/s per call")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--settle", type=float, default=2.0, help="s between restarts")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        parser.exit(2, "redis-server is needed: apt-get install redis-server\n")
    directory = Path(tempfile.mkdtemp(prefix="callbox-rolling-"))
    port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--bind", HOST, "--port", str(port), "--dir", str(directory),
         "--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction",
         "--daemonize", "no", "--logfile", str(directory / "redis.log")],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while (
            subprocess.run(
                ["redis-cli", "-p", str(port), "ping"], capture_output=True, check=False
            ).stdout.strip()
            != b"PONG"
        ):
            if time.monotonic() > deadline or redis.poll() is not None:
                parser.exit(1, f"redis-server did not start; see {directory}\n")
            time.sleep(0.05)
        began = time.monotonic()
        outcome = trio.run(
            lambda: rolling_restart(
                f"redis://{HOST}:{port}/0",
                directory,
                calls=args.calls,
                rate=args.rate,
                nodes=args.nodes,
                settle_s=args.settle,
            )
        )
    finally:
        redis.terminate()
        redis.wait()
    print(outcome.report())
    print(f"{time.monotonic() - began:.0f} s in all; logs in {directory}")
    failed = (
        outcome.errors
        or outcome.duplicates
        or outcome.skipped
        or outcome.unread
        or outcome.not_resumed
        or any(outcome.exit_statuses)
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
