"""Drive a Switchboard without sockets or a real clock, the way h11's tests wire machines together.

Every frame the switchboard sends is decoded with schema validation and kept per connection as its
wire dict, so each test also proves that what it saw is valid against `schemas/`.

With `pytest --inject-misses` (tests/core/conftest.py), every event is also run as a store shared
by many nodes would run it: the store raises `Missing` at its first lookup, and the event must
leave everything as it was; then at its second, and so on until the event gets through. What it
finally does must equal what a shadow switchboard, never missing anything, did with the same event.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any, ClassVar

import orjson

from callbox.auth import AuthError
from callbox.codec import decode_server
from callbox.config import Config
from callbox.core.actions import (
    CALL_TIMERS,
    Action,
    CancelTimer,
    Close,
    CloseCall,
    Notify,
    OpenCall,
    Send,
    StartTimer,
    TimerKey,
)
from callbox.core.outbox import Outbox
from callbox.core.records import value_of
from callbox.core.sessions import Session
from callbox.core.store import LocalStore, Missing, RecordKey, TrackingStore
from callbox.core.switchboard import Switchboard
from callbox.messages import Hello, IceServer
from callbox.server.webhooks import event_body
from tests.helpers import check_webhook_body

Wire = dict[str, Any]


class MissAt:
    """Mixed into a `TrackingStore`: the lookup numbered `miss_at` (from 1) in an event raises
    `Missing`, as a node's cache would for a record it does not hold."""

    miss_at: int | None = None
    lookups = 0

    def looked_up(self, key: RecordKey) -> None:
        self.lookups += 1
        if self.lookups == self.miss_at:
            raise Missing(key)
        super().looked_up(key)  # type: ignore[misc]


def state_of(switchboard: Switchboard, *, traffic: bool = True) -> Any:
    """Everything an event may change, as one comparable value: the records, this process's
    connections, the sign-in throttle. The order of the indexes themselves is left out (a
    rollback may put an entry back last; nothing iterates them), not the order within a record
    (a room's members are told in the order they joined). Without `traffic`, what each session
    has been sent and what each connection has spent of its rate limit are left out too."""
    store = switchboard.store
    assert isinstance(store, LocalStore)
    sessions: dict[str, Any] = store.sessions
    links: dict[int, Any] = switchboard._links
    if not traffic:
        sessions = {key: _unsent(session) for key, session in sessions.items()}
        links = {conn: value_of(link)[1][2:] for conn, link in links.items()}
    indexes: list[dict[Any, Any]] = [
        sessions,
        store.by_resume_token,
        store.users,
        store.calls,
        store.rooms,
        store.watching,
        store.told,
        dict(store.seen._seen),
        links,
        dict(switchboard._sessions.auth_throttle._failures),
    ]
    return tuple(tuple(sorted(value_of(index), key=lambda item: item[0])) for index in indexes)


def _unsent(session: Session) -> Session:
    copy = session.copy()
    copy.next_seq, copy.replay, copy.replay_held, copy.unsent_from = 0, None, 0, 0
    return copy


def first_difference(before: Any, after: Any, within: Any = None) -> str:
    """Where two values of `state_of` first differ, and how."""
    if (
        isinstance(before, tuple)
        and isinstance(after, tuple)
        and len(before) == len(after)
        and before != after
    ):
        for old, new in zip(before, after, strict=True):
            if old != new:
                return first_difference(old, new, before)
    return f"{before!r} became {after!r}, in {within!r}"


class Harness:
    inject_misses: ClassVar[bool] = False
    """Set by `pytest --inject-misses`: run every event with a miss at each lookup in turn."""
    outbox_type: type[Outbox] = Outbox
    """Where the core writes what it decides: a subclass may record more."""
    store_type: type[LocalStore] = TrackingStore
    """Where the core keeps its records: tracking by default, so every core test also checks
    that an event the core calls read-only changes nothing, and what each event read and wrote
    is there to look at (`store.committed`); a subclass may record more (see test_model.py)."""

    cluster: ClassVar[bool] = False
    """Set by `pytest --cluster`: every harness of the default kind (a `TrackingStore`) is made
    a cluster of nodes (tests/cluster/harness.py)."""

    def __new__(cls, *args: Any, **overrides: Any) -> Harness:
        if Harness.cluster and cls.store_type is TrackingStore:
            from tests.cluster.harness import ClusterMixin, cluster_variant  # noqa: PLC0415

            if not issubclass(cls, ClusterMixin):
                return super().__new__(cluster_variant(cls))
        return super().__new__(cls)

    def __init__(self, config: Config | None = None, **overrides: Any) -> None:
        self.config = (config or Config()).with_overrides(**overrides)
        self.now = 1000.0
        self.wall_offset = 1_700_000_000.0
        """Unix time minus `now`: a test may move it, as a wall clock can be set."""
        self.ice_refresh: float | None = None
        self.refused_users: set[str] = set()
        self.switchboard = self._switchboard(missing=self.inject_misses)
        self.shadow = self._switchboard(missing=False) if self.inject_misses else None
        """With `inject_misses`: the same switchboard, fed the same events, missing nothing."""
        self.misses = 0
        """Misses injected so far (each one an event rolled back and run again)."""
        self.inbox: dict[int, list[Wire]] = {}
        self.closed: dict[int, tuple[int, str]] = {}
        self.timers: dict[TimerKey, float] = {}
        self._timers_of_call: dict[str, set[TimerKey]] = {}
        self.open_calls: set[str] = set()
        self.calls_ever_opened: list[str] = []
        self.user_of: dict[int, str] = {}
        self.welcome_of: dict[int, Wire] = {}
        self.notified: list[Notify] = []
        """The webhook events the core emitted, each checked against its schema."""
        self._conns = itertools.count(1)

    def _switchboard(self, *, missing: bool) -> Switchboard:
        tokens = itertools.count(1)
        store_type = self.store_type
        if missing:
            assert issubclass(store_type, TrackingStore), "misses are injected in lookups"
            store_type = type(f"Missing{store_type.__name__}", (MissAt, store_type), {})
        return Switchboard(
            config=self.config,
            authenticate=self._authenticate,
            ice_servers=lambda user_id: [IceServer(urls=["stun:stun.example.org"])],
            ice_refresh_in=lambda: self.ice_refresh,
            new_token=lambda n: f"t{next(tokens)}",
            outbox=self.outbox_type(),
            store=store_type(),
        )

    def _event(self, event: Callable[[Switchboard], list[Action]]) -> list[Action]:
        """Feed the switchboard one event (with misses injected, if asked) and return its
        actions."""
        if self.shadow is None:
            return event(self.switchboard)
        core_log = logging.getLogger("callbox.core")
        core_log.disabled = True  # a bug the event hits is logged once, by the switchboard
        try:
            expected = event(self.shadow)
        finally:
            core_log.disabled = False
        store = self.switchboard.store
        assert isinstance(store, MissAt)
        for miss_at in itertools.count(1):
            before = state_of(self.switchboard)
            store.miss_at, store.lookups = miss_at, 0
            try:
                actions = event(self.switchboard)
            except Missing as missing:
                self.misses += 1
                after = state_of(self.switchboard)
                assert after == before, (
                    f"a miss at lookup {miss_at} ({missing.key}) left changes behind:"
                    f" {first_difference(before, after)}"
                )
                continue
            finally:
                store.miss_at = None
            assert actions == expected, f"after {miss_at - 1} misses: {actions} != {expected}"
            return actions
        raise AssertionError("unreachable: itertools.count never ends")

    @property
    def wall(self) -> float:
        """The Unix time passed with each event: a different clock from `now`, as in the shell."""
        return self.now + self.wall_offset

    def _authenticate(self, hello: Hello) -> str:
        if hello.user_id is None or hello.user_id in self.refused_users:
            raise AuthError("token signature invalid")
        return hello.user_id

    # Feeding events -------------------------------------------------------------------------

    def open(self, address: str = "192.0.2.1") -> int:
        conn = self._new_conn()
        self.inbox[conn] = []
        now = self.now
        self._on(conn, lambda sb: sb.connect(conn, now, address))
        return conn

    def _new_conn(self) -> int:
        return next(self._conns)

    def _on(self, conn: int, event: Callable[[Switchboard], list[Action]]) -> None:
        """Feed the switchboard that holds `conn` an event about it, and carry out its actions."""
        self._apply(self._event(event))

    def login(self, user_id: str, **hello: Any) -> int:
        """Open a connection and say hello; the welcome is consumed and checked."""
        conn = self.open()
        self.send(conn, {"type": "hello", "user_id": user_id, **hello})
        welcome = self.take(conn)
        assert welcome["type"] == "welcome", welcome
        self.user_of[conn] = user_id
        self.welcome_of[conn] = welcome
        return conn

    def resume(self, user_id: str, token: str, last_seq: int) -> int:
        """Open a connection and ask to resume a session; the `welcome` is left to the test."""
        conn = self.open()
        hello = {"type": "hello", "user_id": user_id, "resume": token, "last_seq": last_seq}
        self.send(conn, hello)
        return conn

    def send(self, conn: int, message: Wire | bytes) -> None:
        data = message if isinstance(message, bytes) else orjson.dumps(message)
        now, wall = self.now, self.wall
        self._on(conn, lambda sb: sb.receive(conn, data, now, wall))

    def server_event(self, event: Callable[[Switchboard], list[Action]]) -> None:
        """Feed the switchboard an event that comes from no connection (the admin API's), and
        carry out its actions."""
        self._apply(self._event(event))

    def receive_binary(self, conn: int) -> None:
        now = self.now
        self._on(conn, lambda sb: sb.receive_binary(conn, now))

    def drop(self, conn: int) -> None:
        now = self.now
        self._on(conn, lambda sb: sb.disconnect(conn, now))

    def advance(self, seconds: float) -> None:
        """Let time pass, firing due timers in deadline order (as the shell's tasks would)."""
        target = self.now + seconds
        while True:
            due = [(deadline, key) for key, deadline in self.timers.items() if deadline <= target]
            if not due:
                break
            deadline, key = min(due, key=lambda item: item[0])
            del self.timers[key]
            self.now = max(self.now, deadline)
            self._fire(key, deadline)
        self.now = target

    def _fire(self, key: TimerKey, deadline: float) -> None:
        now, wall = self.now, self.wall
        self._apply(self._event(lambda sb: sb.timer_fired(key, now, wall)))

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case Send(conn, frame):
                    assert conn not in self.closed, f"sent {frame!r} to closed connection {conn}"
                    decode_server(frame)  # raises if not valid against schemas/
                    self.inbox[conn].append(orjson.loads(frame))
                case Close(conn, code, reason):
                    self.closed[conn] = (code, reason)
                case OpenCall(call_id):
                    self.open_calls.add(call_id)
                    self.calls_ever_opened.append(call_id)
                case CloseCall(call_id, _reason):  # the shell cancels the nursery, timers and all
                    self.open_calls.remove(call_id)
                    for key in self._timers_of_call.pop(call_id, set()):
                        self.timers.pop(key, None)
                case StartTimer(key, deadline):
                    self.timers[key] = deadline
                    if isinstance(key, CALL_TIMERS):
                        self._timers_of_call.setdefault(key.call_id, set()).add(key)
                case CancelTimer(key):
                    self.timers.pop(key, None)
                case Notify():
                    check_webhook_body(orjson.loads(event_body(action)))
                    self.notified.append(action)

    # Reading what was sent -------------------------------------------------------------------

    def take(self, conn: int) -> Wire:
        """The oldest unread message on `conn`."""
        assert self.inbox[conn], f"nothing was sent to connection {conn}"
        return self.inbox[conn].pop(0)

    def take_all(self, conn: int) -> list[Wire]:
        messages, self.inbox[conn] = self.inbox[conn], []
        return messages

    def types(self, conn: int) -> list[str]:
        return [m["type"] for m in self.take_all(conn)]

    def expect(self, conn: int, type_: str, **fields: Any) -> Wire:
        message = self.take(conn)
        assert message["type"] == type_, message
        for name, value in fields.items():
            assert message.get(name) == value, (name, message)
        return message

    def events(self) -> list[tuple[str, dict[str, Any]]]:
        """The webhook events emitted since the last call: (type, data) each."""
        notified, self.notified = self.notified, []
        return [(notify.event_type, notify.data) for notify in notified]

    def quiet(self, *conns: int) -> None:
        for conn in conns:
            assert self.inbox[conn] == [], self.inbox[conn]


def call_between(h: Harness, caller: int, callee: int, call_id: str = "call-0001") -> None:
    """Set up an accepted 1:1 call and clear both inboxes."""
    h.send(caller, initiate(call_id, h.user_of[callee]))
    h.send(callee, {"type": "call_answer", "call_id": call_id})
    h.take_all(caller)
    h.take_all(callee)


def initiate(call_id: str, *to: str, **extra: Any) -> Wire:
    return {
        "type": "call_initiate",
        "call_id": call_id,
        "to": list(to),
        "media": {"audio": True, "video": True},
        **extra,
    }
