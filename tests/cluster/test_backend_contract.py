"""The shared store's contract (callbox/cluster/backend.py), case by case on each backend, then
random batches on both side by side: `RedisBackend` must do exactly what `MemoryBackend` does.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from callbox.cluster.backend import (
    ABSENT,
    Acknowledge,
    Attach,
    Backend,
    CloseOutbox,
    Committed,
    Conflict,
    Detach,
    Expired,
    MemoryBackend,
    OpenOutbox,
    OutboxOp,
    OutboxState,
    Outcome,
    Overflow,
    Transaction,
    Versioned,
)
from callbox.cluster.redis_backend import RedisBackend, connect
from tests.cluster.redis_server import RedisServer, unique_prefix

_batch_ids = itertools.count()

TIMERS = ("ring c1 bob", "cap c1", "grace s")
DEADLINES = st.sampled_from([1000, 2000])
CONN = 7 << 32
"""The connection outboxes are opened on, in the cases that do not look at it."""
CONNS = st.sampled_from([CONN, CONN + 1, 9 << 32])


class CommittedAs:
    """Equal to a `Committed` with this version and these seqs, whatever connections it names
    (the cases about connections check those)."""

    __hash__ = None  # type: ignore[assignment]  # equal to values that hash otherwise

    def __init__(self, version: int, seqs: tuple[int, ...]) -> None:
        self.version, self.seqs = version, seqs

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Committed) and (other.version, other.seqs) == (
            self.version,
            self.seqs,
        )

    def __repr__(self) -> str:
        return f"Committed({self.version}, {self.seqs}, ...)"


async def commit(backend: Backend, *batch: Transaction) -> list[Outcome]:
    """`batch` under an id of its own."""
    return await backend.commit(f"batch-{next(_batch_ids)}", batch)


async def one(backend: Backend, txn: Transaction) -> Outcome:
    [outcome] = await commit(backend, txn)
    return outcome


def deliver(*deliveries: tuple[str, bytes], ops: Sequence[OutboxOp] = ()) -> Transaction:
    return Transaction({}, outbox_ops=ops, deliveries=deliveries)


def ops(*outbox_ops: OutboxOp) -> Transaction:
    return Transaction({}, outbox_ops=outbox_ops)


async def held(backend: Backend, sid: str) -> list[tuple[int, bytes]]:
    return await backend.frames_after(sid, 0, 1000)


# Records and versions


async def test_versions_come_from_one_counter_so_a_key_made_again_is_new(backend: Backend) -> None:
    assert await one(backend, Transaction({}, writes={"a": b"1", "b": b"2"})) == CommittedAs(1, ())
    assert await one(backend, Transaction({"a": 1}, writes={"a": b"3"})) == CommittedAs(2, ())
    assert await one(backend, Transaction({"a": 2})) == CommittedAs(3, ())  # writing nothing too
    assert await one(backend, Transaction({"b": 1}, deletes=frozenset({"b"}))) == CommittedAs(4, ())
    assert await backend.load(["a", "b"]) == {"a": Versioned(2, b"3"), "b": ABSENT}
    assert await one(backend, Transaction({"b": 0}, writes={"b": b"2"})) == CommittedAs(5, ())
    # A cache that saw the first "b" (version 1) cannot mistake the second for it.
    assert await one(backend, Transaction({"b": 1}, writes={"b": b"x"})) == Conflict(
        frozenset({"b"})
    )
    assert await backend.load(["b"]) == {"b": Versioned(5, b"2")}


async def test_stale_reads_conflict_naming_exactly_those_keys(backend: Backend) -> None:
    await one(backend, Transaction({}, writes={"a": b"1", "b": b"1"}))
    outcome = await one(backend, Transaction({"a": 1, "b": 0, "c": 0, "d": 3}, writes={"e": b""}))
    assert outcome == Conflict(frozenset({"b", "d"}))  # c absent, read absent: fresh


async def test_a_conflict_changes_nothing_and_draws_no_version(backend: Backend) -> None:
    await one(
        backend,
        Transaction({}, writes={"a": b"1", "b": b"1"}, outbox_ops=[OpenOutbox("s", CONN, 8, 100)]),
    )
    stale = Transaction(
        {"a": 0},
        writes={"a": b"2", "c": b"2"},
        deletes=frozenset({"b"}),
        outbox_ops=[Detach("s"), OpenOutbox("t", CONN, 8, 100)],
        deliveries=[("s", b"x")],
    )
    assert await one(backend, stale) == Conflict(frozenset({"a"}))
    assert await backend.load(["a", "b", "c"]) == {
        "a": Versioned(1, b"1"),
        "b": Versioned(1, b"1"),
        "c": ABSENT,
    }
    assert await backend.outboxes(["s", "t"]) == {"s": OutboxState(1, 1, CONN, 1), "t": None}
    assert await held(backend, "s") == []
    assert await one(backend, Transaction({})) == CommittedAs(2, ())


async def test_writes_and_deletes_apply_together_deletes_last(backend: Backend) -> None:
    await one(backend, Transaction({}, writes={"a": b"1", "b": b"1"}))
    txn = Transaction(
        {"a": 1, "b": 1},
        writes={"a": b"\x00\xff binary", "b": b"gone anyway", "c": b"3"},
        deletes=frozenset({"b", "never-was"}),
    )
    assert await one(backend, txn) == CommittedAs(2, ())
    assert await backend.load(["a", "b", "c", "never-was"]) == {
        "a": Versioned(2, b"\x00\xff binary"),
        "b": ABSENT,
        "c": Versioned(2, b"3"),
        "never-was": ABSENT,
    }


async def test_nothing_asked_nothing_answered(backend: Backend) -> None:
    assert await backend.load([]) == {}
    assert await backend.outboxes([]) == {}
    assert await backend.commit("empty", []) == []
    assert await backend.commit("empty", []) == []
    assert await one(backend, Transaction({})) == CommittedAs(1, ())


async def test_record_names_lists_the_keys_of_one_kind_up_to_a_limit(backend: Backend) -> None:
    calls = {f"call:c{n:04}": b"{}" for n in range(1_200)}  # more than a SCAN page
    await one(backend, Transaction({}, writes={**calls, "user:c0001": b"{}", "callx:1": b""}))
    assert sorted(await backend.record_names("call", 2_000)) == sorted(calls)
    some = await backend.record_names("call", 7)
    assert len(some) == 7 and set(some) <= set(calls)
    assert await backend.record_names("user", 10) == ["user:c0001"]
    assert await backend.record_names("room", 10) == []
    await one(backend, Transaction({"call:c0000": 1}, deletes=frozenset({"call:c0000"})))
    assert "call:c0000" not in await backend.record_names("call", 2_000)


# Outboxes


async def test_an_outbox_numbers_from_one_and_holds_frames_in_order(backend: Backend) -> None:
    frames = [b'{"type":"a"}', b"", b"\x00\xff\r\n"]
    opened = deliver(("s", frames[0]), ("s", frames[1]), ops=[OpenOutbox("s", CONN, 8, 100)])
    assert await one(backend, opened) == CommittedAs(1, (1, 2))
    assert await one(backend, deliver(("s", frames[2]))) == CommittedAs(2, (3,))
    assert await backend.outboxes(["s", "nobody"]) == {
        "s": OutboxState(4, 1, CONN, 1),
        "nobody": None,
    }
    assert await held(backend, "s") == list(enumerate(frames, 1))
    assert await backend.frames_after("s", 1, 1) == [(2, b"")]
    assert await backend.frames_after("s", -5, 2) == [(1, frames[0]), (2, b"")]
    assert await backend.frames_after("s", 1, 0) == []
    assert await backend.frames_after("s", 0, -1) == []
    assert await backend.frames_after("s", 3, 10) == []
    assert await backend.frames_after("nobody", 0, 10) == []


async def test_many_deliveries_to_one_session_in_one_transaction(backend: Backend) -> None:
    frames = [str(n).encode() for n in range(2500)]
    txn = deliver(*(("s", frame) for frame in frames), ops=[OpenOutbox("s", CONN, 3000, 10**6)])
    assert await one(backend, txn) == CommittedAs(1, tuple(range(1, 2501)))
    assert await held(backend, "s") == list(enumerate(frames, 1))[:1000]
    assert await backend.frames_after("s", 2000, 1000) == list(enumerate(frames, 1))[2000:]


async def test_the_message_budget_drops_the_oldest(backend: Backend) -> None:
    await one(backend, ops(OpenOutbox("s", CONN, 2, 100)))
    assert await one(backend, deliver(("s", b"1"), ("s", b"2"), ("s", b"3"))) == CommittedAs(
        2, (1, 2, 3)
    )
    assert await held(backend, "s") == [(2, b"2"), (3, b"3")]
    assert (await backend.outboxes(["s"]))["s"] == OutboxState(4, 2, CONN, 1)


async def test_the_byte_budget_drops_the_oldest_and_a_frame_over_it_is_held_alone(
    backend: Backend,
) -> None:
    await one(backend, ops(OpenOutbox("s", CONN, 100, 10)))
    await one(backend, deliver(("s", b"aaaa"), ("s", b"bbbb"), ("s", b"cccc")))
    assert await held(backend, "s") == [(2, b"bbbb"), (3, b"cccc")]
    await one(backend, deliver(("s", b"x" * 25)))
    assert await held(backend, "s") == [(4, b"x" * 25)]
    await one(backend, deliver(("s", b"y")))
    assert await held(backend, "s") == [(5, b"y")]


async def test_an_attached_session_drops_its_oldest_frames_freely(backend: Backend) -> None:
    await one(backend, ops(OpenOutbox("s", CONN, 1, 100)))
    outcome = await one(backend, deliver(*(("s", b"%d" % n) for n in range(5))))
    assert outcome == CommittedAs(2, (1, 2, 3, 4, 5))
    assert await held(backend, "s") == [(5, b"4")]


async def test_a_detached_session_losing_an_unread_frame_overflows_with_nothing_applied(
    backend: Backend,
) -> None:
    await one(backend, ops(OpenOutbox("s", CONN, 2, 100), OpenOutbox("t", CONN, 8, 100)))
    await one(backend, deliver(("s", b"1"), ("s", b"2")))
    await one(backend, ops(Detach("s")))  # the client had both: 3 is the first it lacks
    assert await one(backend, deliver(("s", b"3"), ("s", b"4"))) == CommittedAs(4, (3, 4))
    txn = Transaction(
        {},
        writes={"x": b"1"},
        outbox_ops=[Acknowledge("t", 0)],
        deliveries=[("t", b"a"), ("s", b"5")],
    )
    assert await one(backend, txn) == Overflow(("s",))
    assert await backend.load(["x"]) == {"x": ABSENT}
    assert await held(backend, "s") == [(3, b"3"), (4, b"4")]
    assert await held(backend, "t") == []
    assert await one(backend, Transaction({})) == CommittedAs(5, ())  # no version was drawn


async def test_overflow_names_each_session_once_in_the_order_they_overflowed(
    backend: Backend,
) -> None:
    await one(backend, ops(OpenOutbox("a", CONN, 1, 100), OpenOutbox("b", CONN, 1, 100)))
    await one(backend, deliver(("a", b"1"), ("b", b"1"), ops=[Detach("a"), Detach("b")]))
    outcome = await one(backend, deliver(("b", b"2"), ("a", b"2"), ("b", b"3")))
    assert outcome == Overflow(("b", "a"))


async def test_detach_with_the_first_unsent_seq(backend: Backend) -> None:
    await one(backend, ops(OpenOutbox("s", CONN, 2, 100)))
    await one(backend, deliver(("s", b"1"), ("s", b"2"), ("s", b"3")))
    await one(backend, ops(Detach("s", unsent_from=3)))  # the node wrote 2, not 3
    assert await backend.outboxes(["s"]) == {"s": OutboxState(4, 2, None, 3)}
    assert await one(backend, deliver(("s", b"4"))) == CommittedAs(4, (4,))  # drops 2: read
    assert await one(backend, deliver(("s", b"5"))) == Overflow(("s",))  # would drop 3


async def test_attach_needs_every_frame_after_last_seq(backend: Backend) -> None:
    await one(backend, ops(OpenOutbox("s", CONN, 2, 100)))
    await one(backend, deliver(("s", b"1"), ("s", b"2"), ("s", b"3")))
    await one(backend, ops(Detach("s")))
    assert await backend.outboxes(["s"]) == {"s": OutboxState(4, 2, None, 4)}
    for gone_or_ahead in (0, 4):
        assert await one(backend, ops(Attach("s", CONN, gone_or_ahead))) == Conflict(
            frozenset({"outbox:s"})
        )
    assert await one(backend, ops(Attach("nobody", CONN, 0))) == Conflict(
        frozenset({"outbox:nobody"})
    )
    for last_seq in (1, 3):
        assert isinstance(
            await one(backend, ops(Detach("s"), Attach("s", CONN, last_seq))), Committed
        )
        assert (await backend.outboxes(["s"]))["s"] == OutboxState(4, 2, CONN, 4)


async def test_acknowledge_drops_what_the_client_has_and_no_more(backend: Backend) -> None:
    await one(backend, ops(OpenOutbox("s", CONN, 100, 10)))
    await one(backend, deliver(("s", b"aaaa"), ("s", b"bbbb")))
    assert await one(backend, ops(Acknowledge("s", 3))) == Conflict(frozenset({"outbox:s"}))
    assert await one(backend, ops(Acknowledge("nobody", 0))) == Conflict(
        frozenset({"outbox:nobody"})
    )
    assert isinstance(await one(backend, ops(Acknowledge("s", 1))), Committed)
    assert await held(backend, "s") == [(2, b"bbbb")]
    # The bytes acknowledged left the budget: 8 bytes held now, none to drop.
    await one(backend, deliver(("s", b"cccc")))
    assert await held(backend, "s") == [(2, b"bbbb"), (3, b"cccc")]
    assert isinstance(await one(backend, ops(Acknowledge("s", 1))), Committed)  # already gone
    assert isinstance(await one(backend, ops(Acknowledge("s", 3))), Committed)
    assert await backend.outboxes(["s"]) == {"s": OutboxState(4, 4, CONN, 1)}
    assert await held(backend, "s") == []


async def test_close_removes_an_outbox_and_open_makes_a_new_one(backend: Backend) -> None:
    await one(backend, deliver(("s", b"1"), ops=[OpenOutbox("s", CONN, 8, 100)]))
    assert await one(backend, ops(OpenOutbox("s", CONN, 8, 100))) == Conflict(
        frozenset({"outbox:s"})
    )
    assert isinstance(await one(backend, ops(CloseOutbox("s"))), Committed)
    assert await backend.outboxes(["s"]) == {"s": None}
    assert await held(backend, "s") == []
    for after_close in (ops(CloseOutbox("s")), ops(Detach("s")), deliver(("s", b"2"))):
        assert await one(backend, after_close) == Conflict(frozenset({"outbox:s"}))
    await one(backend, deliver(("s", b"a"), ops=[OpenOutbox("s", CONN, 8, 100)]))
    reopened = deliver(("s", b"b"), ops=[CloseOutbox("s"), OpenOutbox("s", CONN, 8, 100)])
    assert await one(backend, reopened) == CommittedAs(4, (1,))
    assert await held(backend, "s") == [(1, b"b")]


async def test_a_delivery_to_a_session_without_an_outbox_conflicts(backend: Backend) -> None:
    await one(backend, Transaction({}, writes={"a": b"1"}))
    txn = Transaction({"a": 0}, writes={"b": b"1"}, deliveries=[("nobody", b"x")])
    assert await one(backend, txn) == Conflict(frozenset({"a", "outbox:nobody"}))
    await one(backend, ops(OpenOutbox("s", CONN, 8, 100)))
    closing = deliver(("s", b"x"), ops=[CloseOutbox("s")])
    assert await one(backend, closing) == Conflict(frozenset({"outbox:s"}))


# Batches


async def test_a_batch_commits_in_order_each_transaction_by_itself(backend: Backend) -> None:
    await one(backend, ops(OpenOutbox("s", CONN, 8, 100)))
    outcomes = await commit(
        backend,
        Transaction({"a": 0}, writes={"a": b"1"}, deliveries=[("s", b"1")]),
        Transaction({"a": 0}, writes={"a": b"2"}),  # read what the first then wrote
        Transaction({"z": 7}, writes={"b": b"1"}),
        Transaction({"b": 0}, writes={"c": b"1"}, deliveries=[("s", b"2")]),  # b never came
    )
    assert outcomes == [
        CommittedAs(2, (1,)),
        Conflict(frozenset({"a"})),
        Conflict(frozenset({"z"})),
        CommittedAs(3, (2,)),
    ]


async def test_a_batch_committed_again_applies_once_and_says_the_same(backend: Backend) -> None:
    await one(backend, ops(OpenOutbox("s", CONN, 8, 100)))
    batch = [
        Transaction({"a": 0}, writes={"a": b"1"}, deliveries=[("s", b"1")]),
        Transaction({"a": 0}, writes={"a": b"2"}),
        Transaction({}, deliveries=[("nobody", b"x")]),
        Transaction({}, deliveries=[("s", b"2")]),
    ]
    first = await backend.commit("retried", batch)
    assert first == [
        CommittedAs(2, (1,)),
        Conflict(frozenset({"a"})),
        Conflict(frozenset({"outbox:nobody"})),
        CommittedAs(3, (2,)),
    ]
    assert await backend.commit("retried", batch) == first
    assert await backend.commit("retried", batch[:1]) == first  # the id alone decides
    assert await held(backend, "s") == [(1, b"1"), (2, b"2")]
    assert await one(backend, Transaction({})) == CommittedAs(4, ())


# Both backends, side by side

KEYS = ("session:a", "call:ß", "room:with space")
SESSIONS = ("s1", "s2", "séance")


def _transactions(
    versions: dict[str, int], outboxes: dict[str, OutboxState | None]
) -> st.SearchStrategy[Transaction]:
    """Transactions over a few keys and sessions, mostly fresh (reading the versions the store
    has, opening outboxes that are not there, acting on those that are, with seqs near the
    last), so that many commit and, with small budgets, some overflow; some are stale."""
    live = [sid for sid in SESSIONS if outboxes[sid] is not None]
    gone = [sid for sid in SESSIONS if outboxes[sid] is None]

    def mostly(sessions: list[str]) -> st.SearchStrategy[str]:
        return st.sampled_from(sessions * 10 + list(SESSIONS))

    def version(key: str) -> st.SearchStrategy[int]:
        return st.sampled_from([versions[key]] * 12 + [0, versions[key] + 1])

    def near_seq(sid: str) -> st.SearchStrategy[int]:
        box = outboxes[sid]
        next_seq = 1 if box is None else box.next_seq
        return st.integers(next_seq - 3, next_seq)

    def attach(sid: str) -> st.SearchStrategy[OutboxOp]:
        return st.builds(Attach, st.just(sid), CONNS, near_seq(sid))

    def acknowledge(sid: str) -> st.SearchStrategy[OutboxOp]:
        return st.builds(Acknowledge, st.just(sid), near_seq(sid))

    def applied(sid: str) -> st.SearchStrategy[tuple[str, int]]:
        box = outboxes[sid]
        last = 0 if box is None else box.last_cseq
        return st.tuples(st.just(sid), st.integers(max(0, last - 1), last + 2))

    detach = mostly(live).flatmap(
        lambda sid: st.builds(Detach, st.just(sid), st.none() | near_seq(sid))
    )
    op = st.one_of(
        _open_outbox(mostly(gone)),
        *[mostly(live).flatmap(attach), mostly(live).flatmap(acknowledge), detach] * 2,
        st.builds(CloseOutbox, mostly(live)),
    )
    keys = st.sampled_from(KEYS)
    return st.builds(
        Transaction,
        st.lists(keys, unique=True, max_size=2).flatmap(
            lambda read: st.fixed_dictionaries({key: version(key) for key in read})
        ),
        st.dictionaries(keys, st.binary(max_size=6), max_size=2),
        st.frozensets(keys, max_size=1),
        st.lists(op, max_size=2),
        st.lists(st.tuples(mostly(live), st.binary(max_size=10)), max_size=6),
        st.none() | mostly(live).flatmap(applied),
        st.none() | st.tuples(st.sampled_from(TIMERS), DEADLINES),
        st.dictionaries(st.sampled_from(TIMERS), st.none() | DEADLINES, max_size=2),
    )


def _open_outbox(sessions: st.SearchStrategy[str]) -> st.SearchStrategy[OpenOutbox]:
    """Small budgets, so that frames are dropped (and detached sessions overflow) often."""
    return st.builds(OpenOutbox, sessions, CONNS, st.integers(0, 3), st.integers(0, 16))


@pytest.mark.redis
@settings(max_examples=30, deadline=None)
@given(data=st.data())
async def test_random_batches_do_the_same_on_both(
    redis_server: RedisServer, data: st.DataObject
) -> None:
    # Connected here, not by a fixture: a trio fixture would not outlive the first example.
    async with connect(redis_server.url, prefix=unique_prefix()) as redis:
        await _same_on_both(redis, data)


async def _same_on_both(redis: RedisBackend, data: st.DataObject) -> None:
    memory = MemoryBackend()
    opening = Transaction({}, outbox_ops=[data.draw(_open_outbox(st.just(s))) for s in SESSIONS])
    batch_ids = ["opening"]
    assert await redis.commit("opening", [opening]) == memory.commit_now("opening", [opening])
    for _ in range(data.draw(st.integers(1, 10), label="batches")):
        versions = {key: found.version for key, found in memory.load_now(KEYS).items()}
        batch = data.draw(
            st.lists(_transactions(versions, memory.outboxes_now(SESSIONS)), min_size=1, max_size=3)
        )
        batch_id = data.draw(st.sampled_from([*batch_ids, f"b{len(batch_ids)}"]), label="id")
        batch_ids.append(batch_id)
        outcomes = memory.commit_now(batch_id, batch)
        assert await redis.commit(batch_id, batch) == outcomes
        for outcome in outcomes:  # --hypothesis-show-statistics: how many of each
            event(type(outcome).__name__)
        assert await redis.load(KEYS) == memory.load_now(KEYS)
        assert await redis.overdue(10**6, 10) == memory.overdue_now(10**6, 10)
        assert await redis.outboxes(SESSIONS) == memory.outboxes_now(SESSIONS)
        for sid in SESSIONS:
            after, limit = data.draw(st.integers(-1, 12)), data.draw(st.integers(0, 4))
            assert await redis.frames_after(sid, after, limit) == (
                memory.frames_after_now(sid, after, limit)
            )
            assert await held(redis, sid) == memory.frames_after_now(sid, 0, 1000)


# Connections, and the client messages applied


async def test_each_delivery_names_the_connection_its_session_is_on(backend: Backend) -> None:
    await one(backend, ops(OpenOutbox("s", CONN, 8, 100), OpenOutbox("t", 9 << 32, 8, 100)))
    outcome = await one(backend, deliver(("s", b"1"), ("t", b"2"), ops=[Detach("t")]))
    assert outcome == Committed(2, (1, 1), (CONN, None))
    moved = deliver(("t", b"3"), ops=[Attach("t", CONN + 1, 1)])
    assert await one(backend, moved) == Committed(3, (2,), (CONN + 1,))
    assert (await backend.outboxes(["t"]))["t"] == OutboxState(3, 1, CONN + 1, 1)


async def test_a_client_message_applies_once(backend: Backend) -> None:
    await one(backend, ops(OpenOutbox("s", CONN, 8, 100)))
    first = Transaction({}, deliveries=[("s", b"reply")], applied=("s", 4))
    assert await one(backend, first) == Committed(2, (1,), (CONN,))
    assert (await backend.outboxes(["s"]))["s"] == OutboxState(2, 1, CONN, 1, last_cseq=4)
    for again in (4, 3):
        resent = Transaction({}, deliveries=[("s", b"reply")], applied=("s", again))
        assert await one(backend, resent) == Conflict(frozenset({"outbox:s"}))
    assert await held(backend, "s") == [(1, b"reply")]
    ended = Transaction({}, outbox_ops=[CloseOutbox("s")], applied=("s", 5))  # a `bye`
    assert isinstance(await one(backend, ended), Committed)


async def test_node_numbers_are_never_given_twice(backend: Backend) -> None:
    numbers = [await backend.register_node() for _ in range(3)]
    assert len(set(numbers)) == 3 and min(numbers) >= 1


# Timers


async def test_a_timer_fires_once_however_many_nodes_try(backend: Backend) -> None:
    armed = Transaction({}, timers={"ring c1 bob": 5000, "cap c1": 9000})
    assert isinstance(await one(backend, armed), Committed)
    assert await backend.overdue(6000, 10) == [("ring c1 bob", 5000)]
    assert await backend.overdue(10_000, 1) == [("ring c1 bob", 5000)]
    fired = Transaction({}, fired=("ring c1 bob", 5000), timers={"warn c1": 7000})
    assert isinstance(await one(backend, fired), Committed)
    again = Transaction({}, fired=("ring c1 bob", 5000))
    assert await one(backend, again) == Conflict(frozenset({"timer:ring c1 bob"}))
    assert await backend.overdue(10_000, 10) == [("warn c1", 7000), ("cap c1", 9000)]


async def test_a_timer_armed_again_fires_only_at_its_new_deadline(backend: Backend) -> None:
    await one(backend, Transaction({}, timers={"grace s1": 5000}))
    await one(backend, Transaction({}, timers={"grace s1": 8000}))
    stale = Transaction({}, fired=("grace s1", 5000))
    assert await one(backend, stale) == Conflict(frozenset({"timer:grace s1"}))
    await one(backend, Transaction({}, timers={"grace s1": None}))
    assert await backend.overdue(10_000, 10) == []


# Nodes: leases, and a dead node's sessions


async def test_a_dead_node_is_claimed_once_with_the_sessions_on_it(backend: Backend) -> None:
    on_5, on_6 = (5 << 32) + 1, (6 << 32) + 1
    opened = [OpenOutbox("a", on_5, 8, 100), OpenOutbox("b", on_5 + 1, 8, 100)]
    await one(backend, ops(*opened, OpenOutbox("c", on_6, 8, 100)))
    assert await backend.renew_lease(5, 1000) is False  # a new lease
    assert await backend.renew_lease(5, 2000) is True
    assert await backend.renew_lease(6, 9000) is False
    assert await backend.dead_nodes(5000) == [5]
    await one(backend, ops(Detach("b")))  # b lost its connection before node 5 died
    await one(backend, ops(Detach("c"), Attach("c", on_5 + 2, 0)))  # c resumed on node 5
    assert sorted(await backend.claim_node(5)) == [("a", on_5), ("c", on_5 + 2)]
    assert await backend.claim_node(5) == []  # claimed once
    assert await backend.dead_nodes(5000) == []
    assert await backend.renew_lease(5, 9000) is False  # node 5 learns it was taken for dead
    await one(backend, ops(Attach("a", on_6 + 1, 0)))
    assert await backend.claim_node(6) == [("a", on_6 + 1)]


async def test_a_batch_too_late_applies_nothing_ever(backend: Backend) -> None:
    late = Transaction({}, writes={"a": b"1"}, timers={"cap c1": 5})
    assert await backend.commit("late", [late], not_after_ms=1) == [Expired()]
    assert await backend.commit("late", [late]) == [Expired()]  # its id is spent
    assert (await backend.load(["a"]))["a"] == ABSENT
    assert await backend.overdue(10, 10) == []
    soon = int(time.time() * 1000) + 60_000
    assert isinstance(await one(backend, Transaction({}, writes={"a": b"1"})), Committed)
    assert isinstance((await backend.commit("in time", [late], soon))[0], Committed)
