"""Each event is a transaction over the store: what it read (with versions) and wrote is known,
a bug inside it undoes all of its changes, and a lookup that misses rolls it back to be run again.

`pytest --inject-misses` runs the whole core suite with a miss at every lookup of every event
(tests/core/harness.py); the tests here check what that rests on, and that the
injection does catch a rollback that leaves something behind.
"""

from __future__ import annotations

from typing import Any

import pytest

from callbox.core.sessions import Sessions
from callbox.core.store import TrackingStore
from callbox.core.switchboard import Switchboard

from .harness import Harness, Wire, call_between, initiate, state_of

pytestmark = pytest.mark.single_process(
    "it tests the single process store's rollback and read sets"
)


class Injecting(Harness):
    inject_misses = True


def committed(h: Harness) -> Any:
    store = h.switchboard.store
    assert isinstance(store, TrackingStore) and store.committed is not None
    return store.committed


def session_of(h: Harness, conn: int) -> str:
    return str(h.welcome_of[conn]["session_id"])


def test_a_relay_reads_its_sender_and_its_call_and_writes_nothing() -> None:
    h = Harness()
    alice, bob = h.login("alice"), h.login("bob")
    call_between(h, alice, bob)
    h.send(alice, {"type": "ice_candidate", "call_id": "call-0001", "to": "bob", "candidate": None})
    h.expect(bob, "ice_candidate")
    done = committed(h)
    assert [key for key, _ in done.reads] == [
        ("session", session_of(h, alice)),
        ("call", "call-0001"),
    ]
    assert done.writes == frozenset() and done.deletes == frozenset()


def test_a_call_writes_what_it_changes_and_versions_count_the_changes() -> None:
    h = Harness()
    alice, bob = h.login("alice"), h.login("bob")
    h.send(alice, initiate("call-0001", "bob"))
    started = committed(h)
    assert started.writes >= {
        ("call", "call-0001"),
        ("session", session_of(h, alice)),  # it is in the call
        ("session", session_of(h, bob)),  # it rings
        ("user", "alice"),
        ("user", "bob"),
    }
    assert started.writes <= {key for key, _ in started.reads} | {("call", "call-0001")}
    h.send(bob, {"type": "call_answer", "call_id": "call-0001"})
    answered = committed(h)
    assert dict(answered.reads)[("call", "call-0001")] == 1  # created once
    h.send(bob, {"type": "hangup", "call_id": "call-0001"})
    ended = committed(h)
    assert dict(ended.reads)[("call", "call-0001")] == 2  # and answered once
    assert ("call", "call-0001") in ended.deletes


CHANGING_MESSAGES: dict[str, tuple[str, Wire]] = {
    "hello": ("new", {"type": "hello", "user_id": "frank"}),
    "bye": ("alice", {"type": "bye"}),
    "call_initiate": ("carol", initiate("call-0009", "erin")),
    "call_answer": ("carol", {"type": "call_answer", "call_id": "call-0002"}),
    "call_reject": ("carol", {"type": "call_reject", "call_id": "call-0002", "reason": "busy"}),
    "call_invite": ("alice", {"type": "call_invite", "call_id": "call-0001", "to": ["erin"]}),
    "hangup": ("bob", {"type": "hangup", "call_id": "call-0001"}),
    "room_join": ("carol", {"type": "room_join", "room": "lobby"}),
    "room_leave": ("alice", {"type": "room_leave", "room": "lobby"}),
    "room_broadcast": ("alice", {"type": "room_broadcast", "room": "lobby", "data": {}}),
    "presence_subscribe": ("carol", {"type": "presence_subscribe", "users": ["alice"]}),
    "presence_unsubscribe": ("dave", {"type": "presence_unsubscribe", "users": ["alice"]}),
    "presence_set": ("alice", {"type": "presence_set", "status": "away"}),
}
"""A message of each kind that changes records (but `ack`: below), and who sends it (`scene`)."""


def scene() -> tuple[Harness, dict[str, int]]:
    """alice and bob in a call, carol rung by dave, both in a room with alice whose presence
    dave watches, erin idle, and a connection yet to say hello."""
    h = Harness()
    conns = {name: h.login(name) for name in ("alice", "bob", "carol", "dave", "erin")}
    call_between(h, conns["alice"], conns["bob"])
    h.send(conns["dave"], initiate("call-0002", "carol"))
    h.send(conns["alice"], {"type": "room_join", "room": "lobby"})
    h.send(conns["dave"], {"type": "room_join", "room": "lobby"})
    h.send(conns["dave"], {"type": "presence_subscribe", "users": ["alice"]})
    conns["new"] = h.open()
    for conn in conns.values():
        h.take_all(conn)
    return h, conns


@pytest.mark.parametrize("type_", sorted(CHANGING_MESSAGES))
def test_a_bug_after_every_change_of_a_message_undoes_them_all(
    type_: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sender, message = CHANGING_MESSAGES[type_]
    dispatch = Switchboard._dispatch

    def dispatch_then_fail(self: Switchboard, *args: Any) -> None:
        dispatch(self, *args)
        raise RuntimeError("a bug, forced by the test once the message has done its work")

    h, conns = scene()
    before = state_of(h.switchboard, traffic=False)  # the sender is sent an error
    monkeypatch.setattr(Switchboard, "_dispatch", dispatch_then_fail)
    h.send(conns[sender], message | {"rid": "r"})
    h.expect(conns[sender], "error", code="internal", rid="r")
    assert state_of(h.switchboard, traffic=False) == before
    for conn in conns.values():
        if conn != conns[sender]:
            h.quiet(conn)

    monkeypatch.undo()  # the same message, with no bug, does change something
    h.send(conns[sender], message)
    assert state_of(h.switchboard, traffic=False) != before


def test_a_bug_after_an_ack_keeps_every_frame_it_would_have_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    acknowledge = Sessions.acknowledge

    def acknowledge_then_fail(self: Sessions, *args: Any) -> None:
        acknowledge(self, *args)
        raise RuntimeError("a bug, forced by the test once the ack has done its work")

    h, conns = scene()
    alice = h.switchboard.store.session(session_of(h, conns["alice"]))
    assert alice is not None and alice.replay is not None
    held = list(alice.replay)
    monkeypatch.setattr(Sessions, "acknowledge", acknowledge_then_fail)
    h.send(conns["alice"], {"type": "ack", "last_seq": len(held), "rid": "r"})
    h.expect(conns["alice"], "error", code="internal", rid="r")
    assert list(alice.replay)[:-1] == held  # and then the error


def test_a_bug_in_a_timer_after_its_changes_undoes_them(monkeypatch: pytest.MonkeyPatch) -> None:
    timer = Switchboard._timer

    def timer_then_fail(self: Switchboard, *args: Any) -> None:
        timer(self, *args)
        raise RuntimeError("a bug, forced by the test once the timer has done its work")

    h, conns = scene()
    before = state_of(h.switchboard)
    monkeypatch.setattr(Switchboard, "_timer", timer_then_fail)
    h.advance(h.config.ring_timeout_ms / 1000)  # carol's ring times out: the call ends
    assert state_of(h.switchboard) == before
    h.quiet(*conns.values())


def test_every_lookup_of_an_event_misses_in_turn() -> None:
    """A relay looks up two records: it is run three times, the first two rolled back."""
    h = Injecting()
    alice, bob = h.login("alice"), h.login("bob")
    call_between(h, alice, bob)
    misses = h.misses
    h.send(alice, {"type": "ice_candidate", "call_id": "call-0001", "to": "bob", "candidate": None})
    h.expect(bob, "ice_candidate")
    assert h.misses - misses == 2


def test_a_rollback_that_leaves_a_change_behind_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The injection is a check that can fail: with records no longer put back on a rollback,
    the first event that changes a record before a later lookup misses is caught."""
    monkeypatch.setattr("callbox.core.store.put_back", lambda live, copy: None)
    h = Injecting()
    alice = h.login("alice")
    h.login("bob")
    with pytest.raises(AssertionError, match="left changes behind"):
        h.send(alice, initiate("call-0001", "bob"))
