"""A node of three killed mid-traffic, and nothing lost: issue 12's chaos proof, bounded.

    .venv/bin/python bench/chaos.py [--calls 100] [--rate 5] [--freeze-for 8] [--help]

Starts a ``redis-server`` of its own (127.0.0.1, a free port, a temporary directory, nothing
saved, ``noeviction``) and three ``callbox serve --redis`` nodes on it (free ports,
``RECONNECT_GRACE_MS`` 10 s, ``RING_TIMEOUT_MS`` 4 s). ``--calls`` pairs of `callbox.client`
clients (``reconnect=True``, all three URLs, each client's first URL chosen so that callers and
callees are spread over the nodes, two pairs in three across two nodes) set up a call each and
relay numbered ``ice_candidate``s (every tenth an ``sdp_offer``) to each other at ``--rate``
messages per second per pair, half each way, each side from its own task while another reads.

After ``--kill-after`` seconds of traffic one node gets SIGKILL. ``--ring-pairs`` callers on that
node invite callees elsewhere 1.5 s before, and nobody answers, so their ring timeouts fall due
while the node that armed them is dead: another node must fire them (lateness measured at the
callee, from the invitation sent plus the ring timeout). Then, unless ``--freeze-for 0``, a second
node gets SIGSTOP for ``--freeze-for`` seconds and SIGCONT: its lease runs out meanwhile, the
last node takes its sessions over, and on waking it must close its connections with 1012, so
that its clients resume on the last node.

At the end the senders stop, every client waits until it has read all its peer sent, the
callers hang up, every client says ``bye``, and the Redis keyspace is compared with the one
before the first client. Checked, each a failure if not so (the exit code is then 1):

- every session on a killed or frozen node resumed (``welcome.resumed``) within the run, and
  none lost (``SessionLost``); resume times from SIGKILL (and SIGSTOP, SIGCONT) are reported,
  p50/p99/max;
- every client read every numbered message of its peer exactly once and in order (a `seq` gap
  is the client's own ``ProtocolViolation``; duplicates, gaps and reorderings of the pair's
  counter are counted), and no ``error`` came;
- no call ended before the planned hang-ups (the ring-timeout calls excepted, which must end
  with ``ring_timeout``, at most ``--max-late`` seconds late);
- after the last ``bye``, no key without an expiry beyond those present before the first client
  (and ``version``, made by the first commit); the keys with an expiry are listed by kind;
- no traceback in the nodes' logs.

Loopback only; bounded in time (about 45 s with the defaults; each phase has a timeout) and in
count; every process started is stopped by its PID whatever happens (a frozen one is continued
first). The nodes' logs are kept, and their directory printed, when a check fails.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio
from run_relay_bench import HOST, cores_busy_seconds, cpu_seconds, free_port, wait_listening

from callbox.client import Client, ConnectionClosed, ProtocolViolation, SessionLost
from callbox.cluster.backend import LAST_SEEN_TTL_MS
from callbox.messages import (
    CallAccepted,
    CallEnded,
    CallIncoming,
    CallRejected,
    CallRinging,
    Error,
    RelayedIceCandidate,
    RelayedSdpOffer,
    ServerMessage,
    Welcome,
)
from callbox.server.cluster import LEASE_S

PREFIX = "cb:"
"""The nodes' key prefix (the default)."""
GRACE_MS = 10_000
RING_TIMEOUT_MS = 4_000
RING_LEAD_S = 1.5
"""How long before the kill the ring-timeout calls are placed: their timeouts fall due 2.5 s
after it, while the node that armed them is dead and its lease (5 s) has not yet run out."""
IDLE_S = 2.0
"""How long the connected clients wait before the traffic, for the nodes' idle CPU."""
SET_UP_AT_ONCE = 20
"""Pairs connecting and setting up their call at the same time."""
PHASE_TIMEOUT_S = 20.0
"""The longest any phase (set-up, drain, hang-up, bye) may take."""
STOP_TIMEOUT_S = 10.0
SOME_SDP = "v=0\r\no=- {n} 1 IN IP4 127.0.0.1\r\ns=chaos\r\nt=0 0\r\n"
LIFETIMES_S = {"idem:": 300, "r:last_seen:": LAST_SEEN_TTL_MS / 1000}
"""The stated lifetimes of the keys that expire (decision 0014), by kind; a batch id is
"node:count", so "idem:" comes with the node's number."""
EXPECTED_CLOSE_CODES = {"kill": {1006}, "freeze": {1012}}
"""How a node's clients see its connections end: a killed node's sockets are closed by its
kernel without a closing handshake (1006); a node taken for dead closes its own with 1012."""


# Processes ---------------------------------------------------------------------------------


@dataclass
class Process:
    """A process of the run's own, stopped by its PID."""

    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log: Path
    stopped: bool = False
    """SIGSTOPped and not yet continued."""
    cpu_s: float = 0.0
    """CPU time used, read before it is killed or stopped."""

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def url(self) -> str:
        return f"ws://{HOST}:{self.port}/ws"

    def read_cpu(self) -> float:
        if self.popen.poll() is None:
            self.cpu_s = cpu_seconds(self.pid)
        return self.cpu_s

    def stop(self) -> None:
        """SIGCONT if stopped, SIGTERM, then SIGKILL after `STOP_TIMEOUT_S`; by PID only."""
        if self.popen.poll() is not None:
            return
        self.read_cpu()
        if self.stopped:
            os.kill(self.pid, signal.SIGCONT)
        os.kill(self.pid, signal.SIGTERM)
        try:
            self.popen.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.popen.wait()


def start_redis(directory: Path) -> Process:
    port = free_port()
    log = directory / "redis.log"
    popen = subprocess.Popen(
        [
            "redis-server",
            "--bind",
            HOST,
            "--port",
            str(port),
            "--dir",
            str(directory),
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory-policy",
            "noeviction",
            "--daemonize",
            "no",
            "--logfile",
            str(log),
        ],
        stdin=subprocess.DEVNULL,
    )
    redis = Process("redis", popen, port, log)
    try:
        wait_listening(port, popen)
    except BaseException:
        redis.stop()
        raise
    return redis


def start_node(
    directory: Path,
    index: int,
    redis_url: str,
    *,
    env: Mapping[str, str] | None = None,
    options: Sequence[str] = (),
) -> Process:
    """`callbox serve` as a user runs it: its own process, a clean environment but ours;
    `env` adds to it, `options` to the command line (bench/cluster_bench.py: rate limits lifted,
    `--log-level warning`, `--workers 2`)."""
    port = free_port()
    node_env = {k: v for k, v in os.environ.items() if not k.startswith(("CALLBOX_", "JWT_"))}
    node_env |= {
        "CALLBOX_REDIS_URL": redis_url,
        "RECONNECT_GRACE_MS": str(GRACE_MS),
        "RING_TIMEOUT_MS": str(RING_TIMEOUT_MS),
        **(env or {}),
    }
    log = directory / f"node-{index}.log"
    command = [sys.executable, "-m", "callbox", "serve", "--host", HOST, "--port", str(port)]
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [*command, *options],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=node_env,
        )
    return Process(f"node {index}", popen, port, log)


def name_node(node: Process) -> None:
    """Names a listening node as the cluster numbers it ("cluster node HOST/N" in its log), so
    that the report and the nodes' own warnings speak of the same numbers."""
    match = re.search(r"cluster node \S+/(\d+)", node.log.read_text(errors="replace"))
    if match:
        node.name = f"node {match.group(1)}"


def redis_cli(redis: Process, *command: str) -> list[str]:
    """One command through `redis-cli --raw`: its reply, one element a line."""
    done = subprocess.run(
        ["redis-cli", "-h", HOST, "-p", str(redis.port), "--raw", *command],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.splitlines()


KEYSPACE = """
local reply, groups, order = {}, {}, {}
local cursor = '0'
repeat
  local page = redis.call('SCAN', cursor, 'COUNT', 1000)
  cursor = page[1]
  for _, key in ipairs(page[2]) do
    local ttl = redis.call('PTTL', key)
    if ttl < 0 then
      table.insert(reply, 'P ' .. key .. ' ' .. redis.call('TYPE', key)['ok'])
    else
      local kind = string.match(key, '^(.*:)') or key
      local group = groups[kind]
      if not group then
        group = {0, ttl, ttl}
        groups[kind] = group
        table.insert(order, kind)
      end
      group[1] = group[1] + 1
      group[2] = math.min(group[2], ttl)
      group[3] = math.max(group[3], ttl)
    end
  end
until cursor == '0'
for _, kind in ipairs(order) do
  local g = groups[kind]
  table.insert(reply, 'E ' .. kind .. ' ' .. g[1] .. ' ' .. g[2] .. ' ' .. g[3])
end
return reply
"""
"""Every key without an expiry ("P key type"), and the keys with one grouped by what precedes
their last colon ("E kind count min_ms max_ms"): one script, so one consistent picture."""


@dataclass
class Keyspace:
    persistent: dict[str, str]
    """Key: type."""
    expiring: dict[str, tuple[int, int, int]]
    """Kind: count, shortest and longest time to live (ms)."""


def keyspace(redis: Process) -> Keyspace:
    found = Keyspace({}, {})
    for line in redis_cli(redis, "EVAL", KEYSPACE, "0"):
        tag, rest = line.split(" ", 1)
        if tag == "P":
            key, kind = rest.rsplit(" ", 1)
            found.persistent[key] = kind
        else:
            kind, count, shortest, longest = rest.rsplit(" ", 3)
            found.expiring[kind] = (int(count), int(shortest), int(longest))
    return found


def used_memory(redis: Process) -> int:
    info = dict(line.split(":", 1) for line in redis_cli(redis, "INFO", "memory") if ":" in line)
    return int(info["used_memory"])


def describe_key(redis: Process, key: str, kind: str) -> str:
    """A persistent key as the report shows it: its type, size, and a sample."""
    size = {"hash": "HLEN", "zset": "ZCARD", "list": "LLEN", "set": "SCARD"}.get(kind)
    if size is None:
        return f"{key} ({kind})"
    count = redis_cli(redis, size, key)[0]
    sample = ""
    if kind == "zset":
        sample = " e.g. " + " ".join(redis_cli(redis, "ZRANGE", key, "0", "3", "WITHSCORES"))
    elif kind == "hash":
        sample = " e.g. " + " ".join(redis_cli(redis, "HRANDFIELD", key, "3"))
    return f"{key} ({kind} of {count}){sample}"


# Clients -----------------------------------------------------------------------------------


class TimedClient(Client):
    """A `Client` that notes when each `welcome` came: a resume's time is read from it. The
    client sets `welcome` when it opens and at every resume, so a property sees each one at the
    moment it arrived, without reaching into how the client follows its URLs."""

    welcomes: list[tuple[float, Welcome]]
    welcomed: trio.Event
    """Set (and replaced) at each `welcome`: to wait for the next one."""

    @property
    def welcome(self) -> Welcome:
        return self._welcome

    @welcome.setter
    def welcome(self, value: Welcome) -> None:
        self._welcome = value
        if not hasattr(self, "welcomes"):
            self.welcomes = []
            self.welcomed = trio.Event()
        self.welcomes.append((trio.current_time(), value))
        self.welcomed.set()
        self.welcomed = trio.Event()


@dataclass
class Side:
    """One party of a call: what it sent and what it read of its peer's numbered messages."""

    user: str
    node: int
    """The node of its first URL."""
    client: TimedClient | None = None
    sent: int = 0
    """The counter of the last numbered message sent."""
    read: int = 0
    """The highest counter read from the peer."""
    duplicates: int = 0
    missed: int = 0
    """Counters skipped (a later one read first)."""
    ended: list[tuple[float, CallEnded]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """Anything that broke the session's contract: errors, violations, a lost session."""
    lost: int = 0
    """`SessionLost` raised (by its reader, its sender, or both, for one lost session)."""
    node_at: dict[str, str] = field(default_factory=dict)
    """Its URL at each disruption (kill, freeze), to know whom it affected."""
    changed: trio.Event = field(default_factory=trio.Event)
    """Set (and replaced) whenever `read` or `ended` changes."""
    latencies: list[tuple[float, float]] = field(default_factory=list)
    """(when sent, seconds until read) of each candidate read from the peer."""
    sends: dict[int, tuple[float, str, int]] = field(default_factory=dict)
    """Per counter sent: when (trio's clock), on which URL, with which `cseq`; to tell what
    happened to a message its peer did not read in its place."""
    skips: list[tuple[float, int, int]] = field(default_factory=list)
    """(when, counter expected, counter read) of each message read out of order."""

    def seen(self, count: int) -> None:
        """Counter `count` read from the peer."""
        if count <= self.read:
            self.duplicates += 1
            self.skips.append((trio.current_time(), self.read + 1, count))
        else:
            if count > self.read + 1:
                self.missed += count - self.read - 1
                self.skips.append((trio.current_time(), self.read + 1, count))
            self.read = count
        self.changed.set()
        self.changed = trio.Event()


class Phase:
    """A point every pair reaches (or gives up on), for the run to wait for all of them."""

    def __init__(self, name: str, total: int) -> None:
        self.name, self.total, self.arrived = name, total, 0
        self.all = trio.Event()

    def arrive(self) -> None:
        self.arrived += 1
        if self.arrived >= self.total:
            self.all.set()

    async def wait(self, timeout: float) -> bool:
        """Whether every pair arrived within `timeout` seconds."""
        with trio.move_on_after(timeout):
            await self.all.wait()
        return self.all.is_set()


@dataclass
class Pair:
    index: int
    caller: Side
    callee: Side
    ringing_only: bool = False
    """A call nobody answers, placed on the node to be killed: its ring timeout must fire."""
    call_id: str = ""
    placed_at: float = 0.0
    """When the call was placed (trio's clock)."""
    arrived: set[str] = field(default_factory=set)
    """The phases it has reached or given up."""

    @property
    def sides(self) -> tuple[Side, Side]:
        return self.caller, self.callee


@dataclass
class Run:
    args: argparse.Namespace
    nodes: list[Process]
    pairs: list[Pair]
    """Every pair, the ringing ones last."""
    limiter: trio.CapacityLimiter = field(
        default_factory=lambda: trio.CapacityLimiter(SET_UP_AT_ONCE)
    )
    phases: dict[str, Phase] = field(default_factory=dict)
    """"ready" (connected, call set up), "drained", "ended" (hung up), "left" (bye)."""
    started: trio.Event = field(default_factory=trio.Event)
    ring: trio.Event = field(default_factory=trio.Event)
    stop_sending: trio.Event = field(default_factory=trio.Event)
    hang_up: trio.Event = field(default_factory=trio.Event)
    leave: trio.Event = field(default_factory=trio.Event)
    events: dict[str, float] = field(default_factory=dict)
    """When things happened (trio's clock): "start" and "stop" of the traffic, and the
    disruptions, "kill", "freeze", "thaw"."""
    hit: dict[str, Process] = field(default_factory=dict)
    """The node each disruption hit."""
    close_codes: Counter[tuple[str, int | None]] = field(default_factory=Counter)
    """(disruption or "other", close code) of every connection a client followed."""
    traffic_s: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds over the traffic, per process ("clients": this one; "others": the rest of
    the machine, from /proc/stat: other work on shared cores)."""
    memory: dict[str, int] = field(default_factory=dict)
    """Redis's `used_memory` (bytes): "before" the first client, once every call was "set up",
    and "after" the last bye."""
    idle_cpu: dict[str, float] = field(default_factory=dict)
    """The same over `IDLE_S` before the traffic, every client connected."""
    """CPU seconds over the traffic, per process ("generator": this one)."""

    def __post_init__(self) -> None:
        for name in ("ready", "drained", "ended", "left"):
            self.phases[name] = Phase(name, len(self.pairs))

    @property
    def sides(self) -> list[Side]:
        return [side for pair in self.pairs for side in pair.sides]

    def arrive(self, pair: Pair, *names: str) -> None:
        for name in names:
            if name not in pair.arrived:
                pair.arrived.add(name)
                self.phases[name].arrive()


class CloseCodes(logging.Handler):
    """Counts the close codes the clients followed, from `callbox.client`'s INFO line
    ("connection to URL closed (CODE): URL resumed the session")."""

    def __init__(self, run: Run) -> None:
        super().__init__(logging.INFO)
        self.run = run

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if not (isinstance(args, tuple) and str(record.msg).startswith("connection to")):
            return
        lost, code = args[0], args[1]
        what = next((name for name, node in self.run.hit.items() if node.url == lost), "other")
        self.run.close_codes[(what, code if isinstance(code, int) else None)] += 1


def count_of(message: ServerMessage) -> int | None:
    """The counter a numbered relay of `send` carries."""
    if isinstance(message, RelayedIceCandidate) and message.candidate is not None:
        return int(str(message.candidate["candidate"]).split()[1])
    if isinstance(message, RelayedSdpOffer):
        return int(message.sdp.split()[2])
    return None


async def read(run: Run, pair: Pair, side: Side) -> None:
    """Reads `side`'s messages until cancelled: the peer's counters checked, the rest noted."""
    client = side.client
    assert client is not None
    while True:
        try:
            message = await client.receive()
        except SessionLost as lost:  # the client is on a new session: its call is gone
            side.lost += 1
            side.errors.append(f"session lost: {lost}")
            side.changed.set()
            continue
        except (ProtocolViolation, ConnectionClosed) as broken:
            side.errors.append(f"{type(broken).__name__}: {broken}")
            side.changed.set()
            return
        count = count_of(message)
        if count is not None and getattr(message, "call_id", None) == pair.call_id:
            side.seen(count)
            if isinstance(message, RelayedIceCandidate) and message.candidate is not None:
                sent = float(message.candidate["usernameFragment"])
                side.latencies.append((sent, trio.current_time() - sent))
        elif isinstance(message, CallEnded) and message.call_id == pair.call_id:
            side.ended.append((trio.current_time(), message))
            expected = "ring_timeout" if pair.ringing_only else "hangup"
            if message.reason != expected or not (pair.ringing_only or run.hang_up.is_set()):
                side.errors.append(f"call ended unexpectedly: {message.reason}")
            side.changed.set()
            side.changed = trio.Event()
        elif (
            pair.ringing_only
            and isinstance(message, CallIncoming | CallRinging | CallRejected)
            and message.call_id == pair.call_id
        ):
            pass  # a ringing call's, placed while this task reads (rejected: its ring timed out)
        elif isinstance(message, Error):
            side.errors.append(f"error {message.code}: {message.message}")
        else:
            side.errors.append(f"unexpected {message.TYPE}")


async def send(run: Run, pair: Pair, side: Side, peer: Side) -> None:
    """Sends `side`'s numbered messages at its half of the pair's rate until told to stop."""
    client = side.client
    assert client is not None
    period = 2.0 / run.args.rate
    # The pairs start spread over one period, so that their sends do not come in bursts.
    next_at = trio.current_time() + period * pair.index / len(run.pairs)
    while True:
        with trio.move_on_at(next_at):
            await run.stop_sending.wait()
        if run.stop_sending.is_set():
            return
        next_at = max(next_at + period, trio.current_time())
        count = side.sent + 1
        side.sends[count] = (trio.current_time(), client.url, client.last_cseq + 1)
        try:
            if count % 10 == 0:
                await client.offer(pair.call_id, peer.user, SOME_SDP.format(n=count))
            else:
                candidate = {
                    "candidate": f"candidate:1 {count} udp 1 127.0.0.1 9 typ host",
                    "sdpMid": "0",
                    "usernameFragment": f"{trio.current_time():.6f}",  # when sent: the latency
                }
                await client.candidate(pair.call_id, peer.user, candidate)
        except SessionLost as lost:
            side.lost += 1
            side.errors.append(f"session lost while sending: {lost}")
            return
        except (ProtocolViolation, ConnectionClosed) as broken:
            side.errors.append(f"sending: {type(broken).__name__}: {broken}")
            return
        side.sent = count


async def drained(side: Side, peer: Side) -> None:
    """Until `side` has read all `peer` sent (or cannot)."""
    while side.read < peer.sent and not side.errors:
        await side.changed.wait()


async def ended(side: Side) -> None:
    """Until `side` has read its call's end (or cannot)."""
    while not side.ended and not side.errors:
        await side.changed.wait()


def urls_from(nodes: list[Process], first: int) -> list[str]:
    urls = [node.url for node in nodes]
    return urls[first:] + urls[:first]


async def set_up(pair: Pair) -> None:
    """`pair`'s call, placed and answered (read here: no reader runs yet)."""
    caller, callee = pair.caller.client, pair.callee.client
    assert caller is not None and callee is not None
    pair.placed_at = trio.current_time()
    await caller.initiate([callee.user_id], call_id=pair.call_id)
    await caller.expect(CallRinging, call_id=pair.call_id)
    await callee.expect(CallIncoming, call_id=pair.call_id)
    await callee.answer(pair.call_id)
    await callee.expect(CallAccepted, call_id=pair.call_id)
    await caller.expect(CallAccepted, call_id=pair.call_id)


async def run_pair(run: Run, pair: Pair) -> None:
    """A pair's whole life: connect, call, relay until told to stop, drain, hang up, bye.
    Whatever breaks is noted as the caller's error and the pair gives up its phases."""
    try:
        async with trio.open_nursery() as shared:
            try:
                await pair_life(run, pair, shared)
            finally:
                shared.cancel_scope.cancel()
    except Exception as error:  # a pair's failure is a finding, not a crash
        pair.caller.errors.append(f"pair failed: {error!r}")
    finally:
        run.arrive(pair, *run.phases)


async def pair_life(run: Run, pair: Pair, shared: trio.Nursery) -> None:
    caller, callee = pair.sides
    async with run.limiter:
        with trio.fail_after(PHASE_TIMEOUT_S):
            for side in pair.sides:
                urls = urls_from(run.nodes, side.node)
                client = await TimedClient.open(shared, urls, user_id=side.user, reconnect=True)
                assert isinstance(client, TimedClient)
                side.client = client
            if not pair.ringing_only:
                await set_up(pair)
    run.arrive(pair, "ready")
    assert caller.client is not None and callee.client is not None
    async with trio.open_nursery() as readers:
        for side in pair.sides:
            readers.start_soon(read, run, pair, side)
        await run.started.wait()
        if pair.ringing_only:
            await run.ring.wait()
            pair.placed_at = trio.current_time()
            await caller.client.initiate([callee.user], call_id=pair.call_id)
        else:
            async with trio.open_nursery() as senders:
                senders.start_soon(send, run, pair, caller, callee)
                senders.start_soon(send, run, pair, callee, caller)
            with trio.move_on_after(PHASE_TIMEOUT_S):
                await drained(caller, callee)
                await drained(callee, caller)
        run.arrive(pair, "drained")
        await run.hang_up.wait()
        if not pair.ringing_only:
            await caller.client.hangup(pair.call_id)
        with trio.move_on_after(PHASE_TIMEOUT_S):
            await ended(caller)
            await ended(callee)
        run.arrive(pair, "ended")
        await run.leave.wait()
        readers.cancel_scope.cancel()
    for side in pair.sides:
        assert side.client is not None
        with trio.move_on_after(PHASE_TIMEOUT_S):
            code = await side.client.bye()
            if code != 1000:
                side.errors.append(f"bye closed with {code}")
        await side.client.aclose()
    run.arrive(pair, "left")


# The run -------------------------------------------------------------------------------------


def make_pairs(args: argparse.Namespace, doomed: int) -> list[Pair]:
    """Callers on node i % 3 and callees on node (i // 3) % 3: every combination alike, two
    pairs in three across nodes. The ringing pairs' callers are on the node to be killed (it
    arms their ring timeouts), their callees on the others."""
    pairs = [
        Pair(i, Side(f"caller-{i}", i % 3), Side(f"callee-{i}", (i // 3) % 3))
        for i in range(args.calls)
    ]
    for n in range(args.ring_pairs):
        i = args.calls + n
        elsewhere = (doomed + 1 + n % 2) % 3
        pairs.append(Pair(i, Side(f"ringer-{n}", doomed), Side(f"ringee-{n}", elsewhere), True))
    for pair in pairs:
        pair.call_id = f"call-{pair.index:04d}" + ("-ring" if pair.ringing_only else "")
    return pairs


async def disrupt(run: Run) -> None:
    """The timeline: traffic, ringing calls placed, a node killed, another frozen and thawed."""
    args = run.args
    doomed, frozen = run.nodes[args.kill], run.nodes[(args.kill + 1) % 3]
    start = trio.current_time()
    await trio.sleep_until(start + args.kill_after - RING_LEAD_S)
    run.ring.set()
    await trio.sleep_until(start + args.kill_after)
    note_where(run, "kill")
    doomed.read_cpu()
    os.kill(doomed.pid, signal.SIGKILL)
    run.events["kill"], run.hit["kill"] = trio.current_time(), doomed
    print(f"  {time.strftime('%X')} SIGKILL {doomed.name} (pid {doomed.pid})", flush=True)
    await trio.sleep(args.after_kill)
    if args.freeze_for > 0:
        note_where(run, "freeze")
        frozen.read_cpu()
        os.kill(frozen.pid, signal.SIGSTOP)
        frozen.stopped = True
        run.events["freeze"], run.hit["freeze"] = trio.current_time(), frozen
        print(f"  {time.strftime('%X')} SIGSTOP {frozen.name} (pid {frozen.pid})", flush=True)
        await trio.sleep(args.freeze_for)
        os.kill(frozen.pid, signal.SIGCONT)
        frozen.stopped = False
        run.events["thaw"] = trio.current_time()
        print(f"  {time.strftime('%X')} SIGCONT {frozen.name}", flush=True)
        await trio.sleep(args.after_thaw)


def note_where(run: Run, what: str) -> None:
    for side in run.sides:
        if side.client is not None:
            side.node_at[what] = side.client.url


def cpu_now(run: Run, redis: Process) -> dict[str, float]:
    """CPU seconds so far of each process, and of the machine's cores ("busy")."""
    cpu = {node.name: node.read_cpu() for node in run.nodes}
    return cpu | {
        "redis": redis.read_cpu(),
        "clients": time.process_time(),
        "busy": cores_busy_seconds(),
    }


def cpu_between(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    used = {name: after[name] - before[name] for name in before}
    used["others"] = used.pop("busy") - sum(used.values())
    return used


async def chaos(run: Run, redis: Process) -> None:
    """Every pair's life, driven through the timeline; bounded by the phases' timeouts."""
    logger = logging.getLogger("callbox.client")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(CloseCodes(run))
    async with trio.open_nursery() as nursery:
        for pair in run.pairs:
            nursery.start_soon(run_pair, run, pair)
        began = trio.current_time()
        if not await run.phases["ready"].wait(2 * PHASE_TIMEOUT_S):
            print("  not every pair was ready in time", flush=True)
        ready = trio.current_time() - began
        print(f"  {len(run.sides)} clients connected, calls set up in {ready:.1f} s", flush=True)
        idle = cpu_now(run, redis)
        run.memory["set up"] = await trio.to_thread.run_sync(used_memory, redis)
        await trio.sleep(IDLE_S)
        before = cpu_now(run, redis)
        run.idle_cpu = cpu_between(idle, before)
        run.events["start"] = trio.current_time()
        run.started.set()
        await disrupt(run)
        run.stop_sending.set()
        run.events["stop"] = trio.current_time()
        run.traffic_s = run.events["stop"] - run.events["start"]
        after = cpu_now(run, redis)
        run.cpu = cpu_between(before, after)
        print(f"  {time.strftime('%X')} traffic stopped after {run.traffic_s:.1f} s", flush=True)
        await run.phases["drained"].wait(PHASE_TIMEOUT_S)
        run.hang_up.set()
        await run.phases["ended"].wait(PHASE_TIMEOUT_S)
        run.leave.set()
        await run.phases["left"].wait(PHASE_TIMEOUT_S)
        nursery.cancel_scope.cancel()


# The report ----------------------------------------------------------------------------------


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def spread(values: Sequence[float], unit: str = "s", scale: float = 1.0) -> str:
    if not values:
        return "none"
    p50, p99, top = (
        scale * v for v in (quantile(values, 0.5), quantile(values, 0.99), max(values))
    )
    digits = 2 if unit == "s" else 1
    return f"p50 {p50:.{digits}f} {unit}, p99 {p99:.{digits}f} {unit}, max {top:.{digits}f} {unit}"


def resumes(run: Run, what: str, since: str) -> tuple[list[float], list[Side]]:
    """For the sessions on the node `what` hit: seconds from event `since` to their first
    resumed welcome after `what`; and those that never resumed."""
    node, at, since_at = run.hit[what], run.events[what], run.events[since]
    times, missing = [], []
    for side in run.sides:
        if side.node_at.get(what) != node.url or side.client is None:
            continue
        later = [(t, w) for t, w in side.client.welcomes if t > at]
        if later and later[0][1].resumed:
            times.append(later[0][0] - since_at)
        else:
            missing.append(side)
    return times, missing


def report(run: Run, before: Keyspace, after: Keyspace, redis: Process) -> list[str]:
    """Prints the figures; returns the failed checks."""
    failures: list[str] = []
    ringing = sum(pair.ringing_only for pair in run.pairs)
    print(
        f"\n{len(run.pairs) - ringing} calls relaying, {ringing} left ringing,"
        f" {len(run.sides)} clients; rate asked {run.args.rate:g} messages/s per call"
    )
    report_traffic(run, failures)
    report_resumes(run, failures)
    report_timers(run, failures)
    report_errors(run, failures)
    report_cpu(run)
    report_keys(before, after, redis, failures)
    report_memory(run)
    for node in run.nodes:
        text = node.log.read_text(errors="replace")
        tracebacks = text.count("Traceback")
        warnings = [line.split(" ", 4)[-1] for line in text.splitlines() if " WARNING " in line]
        shown = Counter(w for w in warnings if "JWT_SECRET" not in w)
        print(
            f"{node.name}: {tracebacks} tracebacks; warnings: "
            + ("; ".join(f"{n} x {w[:120]}" for w, n in shown.most_common(4)) or "none")
        )
        if tracebacks:
            failures.append(f"{node.name} logged {tracebacks} tracebacks")
    return failures


def report_traffic(run: Run, failures: list[str]) -> None:
    talking = [pair for pair in run.pairs if not pair.ringing_only]
    directions = [(a, b) for pair in talking for a, b in (pair.sides, pair.sides[::-1])]
    sent = sum(peer.sent for _, peer in directions)
    read = sum(side.read for side, _ in directions)
    rate = sent / run.traffic_s if run.traffic_s else 0.0
    print(
        f"traffic: {run.traffic_s:.1f} s, {sent:,} numbered messages sent ({rate:,.0f}/s),"
        f" {read:,} read"
    )
    duplicates = sum(side.duplicates for side, _ in directions)
    missed = sum(side.missed for side, _ in directions)
    unread = sum(max(0, peer.sent - side.read) for side, peer in directions)
    print(f"  duplicated {duplicates}, skipped {missed}, unread at the end {unread}")
    if duplicates or missed or unread:
        failures.append(f"{duplicates} duplicated, {missed} skipped, {unread} unread messages")
        for side, peer in directions:
            for at, expected, got in side.skips[:3]:
                when, url, cseq = peer.sends.get(expected, (0.0, "?", 0))
                print(
                    f"  {side.user} read {got} when {expected} was next ({timeline(run, at)});"
                    f" {peer.user} had sent {expected} with cseq {cseq} to"
                    f" {node_named(run, url)} ({timeline(run, when)})"
                )
    latencies = [item for side, _ in directions for item in side.latencies]
    start, kill, stop = run.events["start"], run.events["kill"], run.events["stop"]
    windows = {
        "before the kill": (start + 1.0, kill),
        "after it": (kill, run.events.get("freeze", stop)),
        "while a node was frozen": (run.events.get("freeze", stop), run.events.get("thaw", stop)),
        "after the thaw": (run.events.get("thaw", stop), stop),
    }
    print("  relay latency of the candidates sent:")
    for name, (since, until) in windows.items():
        window = [latency for at, latency in latencies if since <= at < until]
        if window:
            print(f"    {name}: {spread(window, 'ms', 1000)} ({len(window):,})")


def timeline(run: Run, at: float) -> str:
    """`at` (trio's clock) as seconds after the last disruption before it."""
    past = [(at - t, name) for name, t in run.events.items() if t <= at and name != "stop"]
    since, name = min(past, default=(at, "?"))
    return f"{name} + {since:.2f} s"


def node_named(run: Run, url: str) -> str:
    return next((node.name for node in run.nodes if node.url == url), url)


def report_resumes(run: Run, failures: list[str]) -> None:
    for what, since in (("kill", "kill"), ("freeze", "freeze"), ("freeze", "thaw")):
        if what not in run.hit:
            continue
        times, missing = resumes(run, what, since)
        label = {"kill": "SIGKILL", "freeze": "SIGSTOP", "thaw": "SIGCONT"}[since]
        print(
            f"resumed, of the {len(times) + len(missing)} sessions on {run.hit[what].name}"
            f" at its {what}, from {label}: {spread(times)}"
        )
        if what == "freeze" and run.args.freeze_for < LEASE_S + 1:
            print(f"  (a freeze shorter than the lease, {LEASE_S:g} s: nothing to take over)")
        elif missing and since == what:
            failures.append(f"{len(missing)} sessions hit by the {what} did not resume")
            print(f"  not resumed: {', '.join(side.user for side in missing[:10])}")
    codes = ", ".join(f"{what} {code}: {n}" for (what, code), n in sorted(run.close_codes.items()))
    print(f"  connections followed, by what ended them and close code: {codes or 'none'}")
    for (what, code), n in run.close_codes.items():
        if code not in EXPECTED_CLOSE_CODES.get(what, {code}):
            failures.append(f"{n} connections of the {what} node closed with {code}")


def report_timers(run: Run, failures: list[str]) -> None:
    ringers = [pair for pair in run.pairs if pair.ringing_only]
    if not ringers:
        return
    late = [
        at - pair.placed_at - RING_TIMEOUT_MS / 1000
        for pair in ringers
        for at, ended in pair.callee.ended[:1]
        if ended.reason == "ring_timeout"
    ]
    print(
        f"ring timeouts due while their node was dead, late by: {spread(late)}"
        f" ({len(late)} of {len(ringers)} fired)"
    )
    if len(late) < len(ringers) or max(late, default=0) > run.args.max_late:
        failures.append(
            f"ring timeouts: {len(late)} of {len(ringers)} fired, the latest"
            f" {max(late, default=0):.2f} s late (allowed {run.args.max_late} s)"
        )


def report_errors(run: Run, failures: list[str]) -> None:
    sides = run.sides
    lost = sum(1 for side in sides if side.lost)  # its reader and its sender may both notice
    errors = [(side.user, error) for side in sides for error in side.errors]
    kinds = Counter(error.split(":")[0] for _, error in errors)
    print(
        f"sessions lost {lost}; calls ended before the hang-ups"
        f" {kinds['call ended unexpectedly']}; errors {len(errors)}"
    )
    if errors:
        failures.append(f"{len(errors)} errors seen by the clients")
        for kind, n in kinds.most_common():
            first = next(f"{user}: {error}" for user, error in errors if error.startswith(kind))
            print(f"  {n} x {kind}, e.g. {first[:200]}")


def report_cpu(run: Run) -> None:
    """CPU per relayed message: the nodes' and Redis's over the traffic, less what they spent
    idle (timers, leases: measured before the traffic) over as long, resumes included."""
    if not run.cpu:
        return
    nodes = [node.name for node in run.nodes]
    idle_rate = sum(run.idle_cpu[name] for name in [*nodes, "redis"]) / IDLE_S
    busy = sum(run.cpu[name] for name in [*nodes, "redis"])
    read = sum(side.read for side in run.sides)
    per = (busy - idle_rate * run.traffic_s) / read * 1e6 if read else 0.0
    share = {name: used / run.traffic_s for name, used in run.cpu.items()}
    print(
        f"CPU over the traffic, % of a core: nodes {sum(share[n] for n in nodes):.0%}, redis"
        f" {share['redis']:.0%}, clients {share['clients']:.0%}, other work {share['others']:.0%};"
        f" nodes + redis idle before it: {idle_rate:.0%}"
    )
    print(f"  nodes + redis, idle CPU taken out: {per:,.0f} µs per message relayed")


def report_keys(before: Keyspace, after: Keyspace, redis: Process, failures: list[str]) -> None:
    allowed = set(before.persistent) | {f"{PREFIX}version"}
    left = sorted(set(after.persistent) - allowed)
    print(f"keys without expiry before the first client: {', '.join(sorted(before.persistent))}")
    print("keys after the last bye:")
    for key in sorted(after.persistent):
        print(f"  {describe_key(redis, key, after.persistent[key])}")
    for kind, (count, shortest, longest) in sorted(after.expiring.items()):
        print(f"  {count:6,} x {kind}* expiring in {shortest / 1000:,.0f}-{longest / 1000:,.0f} s")
        name = kind.removeprefix(PREFIX)
        lifetime = next((s for k, s in LIFETIMES_S.items() if name.startswith(k)), None)
        if lifetime is None or longest > lifetime * 1000:
            failures.append(f"{count} keys {kind}* expire in up to {longest / 1000:,.0f} s")
    if left:
        failures.append(f"keys without expiry left: {', '.join(left)}")


def report_memory(run: Run) -> None:
    """Redis's memory: what each session with its call holds, and what the run left."""
    before, set_up, after = (run.memory.get(k, 0) for k in ("before", "set up", "after"))
    if set_up:
        per = (set_up - before) / len(run.sides) / 1024
        print(
            f"Redis used_memory: {before / 2**20:.1f} MiB before the first client;"
            f" {per:.1f} KiB more per session once every call was set up;"
            f" {after / 2**20:.1f} MiB after the last bye"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100, help="calls relaying (2 clients each)")
    parser.add_argument(
        "--rate",
        type=float,
        default=5.0,
        help="messages/s per call, both ways (default 5: a 2-core machine's nodes saturate"
        " near 10, docs/benchmarks.md)",
    )
    parser.add_argument("--ring-pairs", type=int, default=10, help="calls left ringing")
    parser.add_argument("--kill", type=int, default=1, choices=(0, 1, 2), help="node killed")
    parser.add_argument("--kill-after", type=float, default=5.0, help="s of traffic first")
    parser.add_argument("--after-kill", type=float, default=10.0, help="s of traffic after it")
    parser.add_argument("--freeze-for", type=float, default=8.0, help="SIGSTOP, s (0: none)")
    parser.add_argument("--after-thaw", type=float, default=4.0, help="s of traffic after it")
    parser.add_argument("--max-late", type=float, default=1.5, help="s a timer may be late")
    args = parser.parse_args()
    if args.kill_after < RING_LEAD_S + 1:
        parser.error(f"--kill-after must be at least {RING_LEAD_S + 1} s")
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        parser.exit(2, "redis-server and redis-cli are needed: apt-get install redis-server\n")
    began = time.monotonic()
    load = " ".join(f"{n:.1f}" for n in os.getloadavg())
    print(f"{os.cpu_count()} cores, load average {load} before the run")
    directory = Path(tempfile.mkdtemp(prefix="callbox-chaos-"))
    processes: list[Process] = []
    failures = ["the run did not finish"]
    try:
        redis = start_redis(directory)
        processes.append(redis)
        redis_url = f"redis://{HOST}:{redis.port}/0"
        nodes = [start_node(directory, n, redis_url) for n in range(3)]
        processes += nodes
        for node in nodes:
            wait_listening(node.port, node.popen)
            name_node(node)
        print(f"redis-server on {redis.port}; nodes on {', '.join(str(n.port) for n in nodes)}")
        before = keyspace(redis)
        run = Run(args, nodes, make_pairs(args, args.kill))
        run.memory["before"] = used_memory(redis)
        trio.run(chaos, run, redis)
        time.sleep(0.5)  # the last byes' commits are in before their closes; a margin all the same
        run.memory["after"] = used_memory(redis)
        failures = report(run, before, keyspace(redis), redis)
    finally:
        for process in reversed(processes):
            process.stop()
        if failures:
            print(f"\nFAILED: {'; '.join(failures)}\nlogs kept in {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
    print(f"{time.monotonic() - began:.0f} s in all")
    if not failures:
        print("\nOK: every check passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
