"""The shared store on Redis: `Backend` with exactly `MemoryBackend`'s semantics, for nodes on
many machines (tests/cluster/test_backend_contract.py runs the same cases on both).

Every operation is one round trip: a commit is one call of `lua/commit.lua` carrying the whole
batch, each read one call of a read-only script. The scripts say where everything is kept. A
batch's outcomes are kept 300 s under its id, so the client's retry of a commit whose reply was
lost gets them back instead of applying it twice (coredis retries every command, scripts too).

Redis 7.0 or newer, one primary (no Redis Cluster: a transaction's keys span users and calls),
with `maxmemory-policy noeviction`: evicting a record or an outbox would lose it silently.
`connect` checks both and refuses, in one line, what it cannot use.

Only a node of a cluster imports this module: a single process never loads coredis.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from importlib.resources import files
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import anyio
import coredis
from attrs import define, field
from coredis.commands.script import Script
from coredis.exceptions import ConnectionError as RedisConnectionError
from coredis.exceptions import ReadOnlyError, ResponseError
from coredis.retry import ConstantRetryPolicy
from coredis.tokens import PureToken

from callbox.cluster.backend import (
    LAST_SEEN_TTL_MS,
    Acknowledge,
    Attach,
    ClusterUnavailable,
    Committed,
    Conflict,
    Detach,
    Expired,
    OpenOutbox,
    OutboxOp,
    OutboxState,
    Outcome,
    Overflow,
    Transaction,
    Versioned,
)

TIMEOUT_S = 1.0
"""How long connecting, or waiting for a reply, may take (coredis waits forever by default)."""
RETRIES = 2
RETRY_DELAY_S = 0.05
RETRY_DEADLINE_S = 2.0
"""A command whose connection failed or timed out is sent again, at most `RETRIES` times and not
after this long: every command here may be (a commit is idempotent by its batch id)."""
MIN_VERSION = (7, 0)
"""Script flags (`#!lua flags=...`), `EVALSHA_RO` and `SET ... NX GET`."""
_UNAVAILABLE_REPLIES = frozenset({"OOM", "BUSY", "MASTERDOWN"})
"""Error replies that mean Redis refused the work for now, with nothing applied, and that
coredis has no class for (READONLY, during a failover, is its `ReadOnlyError`; LOADING its
`BusyLoadingError`, a connection error)."""


class BadRedis(ClusterUnavailable):
    """A Redis that callbox will not use (too old, evicting keys), or a URL that names none."""

    permanent = True


def _script(name: str) -> str:
    return (files(__package__) / "lua" / name).read_text()


_COMMIT = _script("commit.lua")
_LOAD = _script("load.lua")
_OUTBOXES = _script("outboxes.lua")
_FRAMES_AFTER = _script("frames_after.lua")
_NOW_MS = _script("now_ms.lua")
_OVERDUE = _script("overdue.lua")
_RENEW_LEASE = _script("renew_lease.lua")
_DEAD_NODES = _script("dead_nodes.lua")
_CLAIM_NODE = _script("claim_node.lua")


SCAN_PAGE = 500
"""Keys `SCAN` looks at per step (`record_names`): each step holds Redis that long."""


def _glob_escaped(text: str) -> str:
    """`text` matched literally by a `MATCH` pattern."""
    return "".join(f"\\{char}" if char in "*?[]\\" else char for char in text)


@define(eq=False)
class RedisBackend:
    """The store in Redis, through a coredis client whose pool the caller has entered
    (`connect` does both). `prefix` starts every key, so that tests can share one Redis."""

    client: coredis.Redis[bytes]
    prefix: str = "cb:"
    where: str = "Redis"
    """The server, as messages name it (its URL without a password)."""
    _commit: Script[bytes] = field(init=False)
    _load: Script[bytes] = field(init=False)
    _outboxes: Script[bytes] = field(init=False)
    _frames_after: Script[bytes] = field(init=False)
    _now_ms: Script[bytes] = field(init=False)
    _overdue: Script[bytes] = field(init=False)
    _renew_lease: Script[bytes] = field(init=False)
    _dead_nodes: Script[bytes] = field(init=False)
    _claim_node: Script[bytes] = field(init=False)

    def __attrs_post_init__(self) -> None:
        self._commit = self.client.register_script(_COMMIT)
        self._load = self.client.register_script(_LOAD)
        self._outboxes = self.client.register_script(_OUTBOXES)
        self._frames_after = self.client.register_script(_FRAMES_AFTER)
        self._now_ms = self.client.register_script(_NOW_MS)
        self._overdue = self.client.register_script(_OVERDUE)
        self._renew_lease = self.client.register_script(_RENEW_LEASE)
        self._dead_nodes = self.client.register_script(_DEAD_NODES)
        self._claim_node = self.client.register_script(_CLAIM_NODE)

    async def load(self, keys: Sequence[str]) -> dict[str, Versioned]:
        with self._reaching():
            reply: object = await self._load([], [self.prefix, *keys], readonly=True)
        values = iter(cast(list[int | bytes | None], reply))
        return {
            key: Versioned(cast(int, version), cast(bytes | None, data))
            for key, version, data in zip(keys, values, values, strict=True)
        }

    async def record_names(self, kind: str, limit: int) -> list[str]:
        """`SCAN` with `MATCH` over the records' keys, `SCAN_PAGE` keys a step (never `KEYS`,
        which blocks Redis for the whole key space)."""
        start = f"{self.prefix}r:"
        pattern = _glob_escaped(f"{start}{kind}:") + "*"
        names: list[str] = []
        cursor: int | None = None
        with self._reaching():
            while cursor != 0 and len(names) < limit:
                cursor, keys = await self.client.scan(cursor or 0, match=pattern, count=SCAN_PAGE)
                names += (key.decode().removeprefix(start) for key in keys)
        return names[:limit]

    async def outboxes(self, session_ids: Sequence[str]) -> dict[str, OutboxState | None]:
        with self._reaching():
            reply: object = await self._outboxes([], [self.prefix, *session_ids], readonly=True)
        numbers = iter(cast(list[int], reply))
        return {
            sid: OutboxState(next_seq, first_held, conn or None, unsent_from, last_cseq)
            if next_seq
            else None
            for sid, next_seq, first_held, conn, unsent_from, last_cseq in zip(
                session_ids, numbers, numbers, numbers, numbers, numbers, strict=True
            )
        }

    async def commit(
        self, batch_id: str, batch: Sequence[Transaction], not_after_ms: int = 0
    ) -> list[Outcome]:
        """One call of commit.lua. A commit that raised `ClusterUnavailable`, or was cancelled
        while it waited for its reply, may have applied: the same batch id committed again
        within 300 s gives its outcomes, and applies it if it had not."""
        with self._reaching():
            arguments = _commit_args(self.prefix, batch_id, batch, not_after_ms)
            reply: object = await self._commit([], arguments)
        return [_outcome(cast(list[object], each)) for each in cast(list[object], reply)]

    async def frames_after(
        self, session_id: str, after_seq: int, limit: int
    ) -> list[tuple[int, bytes]]:
        with self._reaching():
            reply: object = await self._frames_after(
                [], [self.prefix, session_id, after_seq, limit], readonly=True
            )
        first, *frames = cast(list[object], reply)
        return list(enumerate(cast(list[bytes], frames), cast(int, first)))

    async def now_ms(self) -> int:
        """Redis's clock, which every node of a cluster reads for deadlines and leases."""
        with self._reaching():
            now: object = await self._now_ms([], [], readonly=True)
        return cast(int, now)

    async def overdue(self, before_ms: int, limit: int) -> list[tuple[str, int]]:
        with self._reaching():
            reply: object = await self._overdue([], [self.prefix, before_ms, limit], readonly=True)
        items = iter(cast(list[bytes], reply))
        return [
            (timer.decode(), int(deadline)) for timer, deadline in zip(items, items, strict=True)
        ]

    async def renew_lease(self, node: int, until_ms: int) -> bool:
        with self._reaching():
            held: object = await self._renew_lease([], [self.prefix, node, until_ms])
        return held == 1

    async def dead_nodes(self, now_ms: int) -> list[int]:
        with self._reaching():
            reply: object = await self._dead_nodes([], [self.prefix, now_ms], readonly=True)
        return [int(node) for node in cast(list[bytes], reply)]

    async def claim_node(self, node: int) -> list[tuple[str, int]]:
        with self._reaching():
            reply: object = await self._claim_node([], [self.prefix, node])
        items = iter(cast(list[bytes], reply))
        return [(sid.decode(), int(conn)) for sid, conn in zip(items, items, strict=True)]

    async def register_node(self) -> int:
        with self._reaching():
            return await self.client.incr(f"{self.prefix}node_numbers")

    async def instance(self) -> str:
        """The id of the data Redis holds: made by the first node that asks, it changes only
        when Redis has lost everything (a restart without persistence), which tells every node
        its cached records and its sessions are gone."""
        made = uuid.uuid4().hex
        with self._reaching():
            found = await self.client.set(
                f"{self.prefix}instance", made, condition=PureToken.NX, get=True
            )
        return made if found is None else found.decode()

    async def check(self) -> None:
        """Refuse a Redis callbox cannot use: one too old for its scripts, or one that would
        evict keys when full."""
        with self._reaching():
            info = await self.client.info("server")
            version = str(info["redis_version"])
            if tuple(int(part) for part in version.split(".")[:2]) < MIN_VERSION:
                raise BadRedis(
                    f"{self.where} runs Redis {version}: callbox needs "
                    f"{'.'.join(map(str, MIN_VERSION))} or newer"
                )
            policy = await self._eviction_policy()
        if policy != "noeviction":
            raise BadRedis(
                f"{self.where} has maxmemory-policy {policy}: callbox needs noeviction "
                "(evicted records and outboxes would be lost silently)"
            )

    async def _eviction_policy(self) -> str:
        try:
            config = await self.client.config_get(["maxmemory-policy"])
            return config[b"maxmemory-policy"].decode()
        except ResponseError:  # CONFIG is often disabled on managed Redis; INFO says it too
            return str((await self.client.info("memory"))["maxmemory_policy"])

    @contextmanager
    def _reaching(self) -> Iterator[None]:
        """Redis out of reach, or refusing work for now, is `ClusterUnavailable` (coredis has
        retried by then)."""
        try:
            yield
        except (RedisConnectionError, TimeoutError) as exc:
            raise ClusterUnavailable(f"cannot reach {self.where}: {exc}") from exc
        except ResponseError as exc:
            refused_for_now = isinstance(exc, ReadOnlyError) or (
                str(exc).split(" ", 1)[0] in _UNAVAILABLE_REPLIES
            )
            if not refused_for_now:
                raise
            raise ClusterUnavailable(f"{self.where} refused: {exc}") from exc


@define(eq=False)
class RedisBus:
    """Nodes wake each other through Redis pub/sub, a channel per node (`<prefix>n:<number>`).
    Pub/sub loses what is published while a subscriber reconnects: a wake-up only hastens a
    delivery the outbox holds anyway (the next frame's gap, or a catch-up, finds it)."""

    backend: RedisBackend

    async def publish(self, node: int, message: bytes) -> None:
        with self.backend._reaching():
            await self.backend.client.publish(f"{self.backend.prefix}n:{node}", message)

    @asynccontextmanager
    async def subscribe(self, node: int) -> AsyncIterator[AsyncIterator[bytes]]:
        channel = f"{self.backend.prefix}n:{node}"
        try:
            async with self.backend.client.pubsub(
                channels=[channel], ignore_subscribe_messages=True
            ) as consumer:
                yield _payloads(consumer)
        except* anyio.ClosedResourceError:
            # coredis 6.9, cancelled (a node stopping), unsubscribes on the connection its
            # cancellation has closed: nothing is left to unsubscribe from.
            pass


async def _payloads(consumer: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    async for message in consumer:
        if message["type"] == "message":
            yield cast(bytes, message["data"])


def _commit_args(
    prefix: str, batch_id: str, batch: Sequence[Transaction], not_after_ms: int
) -> list[str | bytes]:
    """ARGV for commit.lua (which describes the layout): the batch as two strings, integers
    and the bytes of every key, session id and frame, so that coredis handles four arguments
    rather than several per transaction."""
    ints = [len(batch)]
    blob: list[bytes] = []

    def string(text: str | bytes) -> None:
        data = text.encode() if isinstance(text, str) else text
        ints.append(len(data))
        blob.append(data)

    def optional(named: tuple[str, int] | None) -> None:
        """0, or 1 then a name and a number (`applied`, `fired`)."""
        if named is None:
            ints.append(0)
        else:
            ints.append(1)
            string(named[0])
            ints.append(named[1])

    for txn in batch:
        ints.append(len(txn.reads))
        for key, version in txn.reads.items():
            string(key)
            ints.append(version)
        ints.append(len(txn.writes))
        for key, data in txn.writes.items():
            string(key)
            string(data)
        ints.append(len(txn.deletes))
        for key in txn.deletes:
            string(key)
        ints.append(len(txn.outbox_ops))
        for op in txn.outbox_ops:
            code, *numbers = _op_ints(op)
            ints.append(code)
            string(op.session_id)
            ints.extend(numbers)
        optional(txn.applied)
        ints.append(len(txn.deliveries))
        for sid, frame in txn.deliveries:
            string(sid)
            string(frame)
        optional(txn.fired)
        ints.append(len(txn.timers))
        for timer, deadline in txn.timers.items():
            string(timer)
            ints.extend((0, 0) if deadline is None else (1, deadline))
    packed = struct.pack(f">{len(ints)}q", *ints)
    return [prefix, batch_id, packed, b"".join(blob), str(LAST_SEEN_TTL_MS), str(not_after_ms)]


def _op_ints(op: OutboxOp) -> tuple[int, ...]:
    """The operation's code, then its numbers (its session id goes between: commit.lua)."""
    match op:
        case OpenOutbox(_, conn, max_messages, max_bytes):
            return (1, conn, max_messages, max_bytes)
        case Attach(_, conn, last_seq):
            return (2, conn, last_seq)
        case Detach(_, None):
            return (4,)
        case Detach(_, int(unsent_from)):
            return (3, unsent_from)
        case Acknowledge(_, last_seq):
            return (5, last_seq)
        case _:
            return (6,)


def _outcome(reply: list[object]) -> Outcome:
    kind, *rest = reply
    if kind == 0:
        version, seqs, conns = rest
        return Committed(
            cast(int, version),
            tuple(cast(list[int], seqs)),
            tuple(conn or None for conn in cast(list[int], conns)),
        )
    if kind == 3:
        return Expired()
    names = [name.decode() for name in cast(list[bytes], rest[0])]
    return Conflict(frozenset(names)) if kind == 1 else Overflow(tuple(names))


@asynccontextmanager
async def connect(url: str, *, prefix: str = "cb:") -> AsyncIterator[RedisBackend]:
    """The store at `url` (`redis://host:port/db`, `unix:///absolute/path?db=N`), checked
    (`RedisBackend.check`, and its instance id made), for the duration of the block.

    The block runs inside coredis's connection pool, which must be entered by the task that
    shares it with others: enter this in a node's root nursery. The pool wraps what the block
    raises in an exception group; a lone exception comes out as itself.
    """
    where = _where(url)
    client = coredis.Redis.from_url(
        url,
        stream_timeout=TIMEOUT_S,
        connect_timeout=TIMEOUT_S,
        retry_policy=ConstantRetryPolicy(
            (RedisConnectionError, TimeoutError),
            retries=RETRIES,
            delay=RETRY_DELAY_S,
            deadline=RETRY_DEADLINE_S,
        ),
    )
    try:
        async with client:
            backend = RedisBackend(client, prefix, where)
            await backend.check()
            await backend.instance()
            yield backend
    except BaseExceptionGroup as group:
        lone: BaseException = group
        while isinstance(lone, BaseExceptionGroup) and len(lone.exceptions) == 1:
            lone = lone.exceptions[0]
        if lone is group:
            raise
        lone.__suppress_context__ = True  # the group said nothing more
        raise lone  # noqa: B904 (its own cause, if any, is kept)


def _where(url: str) -> str:
    """`url` without its password, once checked to name a Redis (else `BadRedis`, which shows
    it without its password either: messages end up in logs)."""
    parts = urlsplit(url)
    shown = url.replace(parts.netloc, parts.netloc.rpartition("@")[2], 1)
    if "pass" in parts.query.lower():
        shown = shown.replace(f"?{parts.query}", "", 1)
    try:
        port_ok = parts.port is None or parts.port > 0  # .port raises for one not a number
    except ValueError:
        port_ok = False
    if parts.scheme == "unix":
        db = parse_qs(parts.query).get("db", ["0"])[0]
        valid = parts.hostname is None and parts.path.startswith("/")
    else:
        db = parse_qs(parts.query).get("db", [parts.path.strip("/") or "0"])[0]
        valid = parts.scheme in ("redis", "rediss") and bool(parts.hostname) and port_ok
    if not (valid and db.isdigit()):
        raise BadRedis(
            f"not a Redis URL: {shown!r} (redis://host:port/db or unix:///absolute/path?db=N)"
        )
    return f"Redis at {shown}"
