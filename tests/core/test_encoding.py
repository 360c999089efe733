"""Every kind of record encodes to bytes and back to the same value (core/encoding.py): what a
store shared by many nodes will keep. `TrackingStore` checks the same for every record each
event of the core suite writes; this checks records with every field in use."""

from __future__ import annotations

from collections import deque

import pytest

from callbox.core.encoding import decode_record, encode_record
from callbox.core.records import value_of
from callbox.core.sessions import RECENTLY_ENDED_CALLS, Session
from callbox.core.store import LocalStore

from .harness import Harness, call_between, initiate


def busy_store() -> LocalStore:
    """Sessions that ring, are in a call, in rooms, watch, broadcast and have ended calls."""
    h = Harness()
    alice, bob, carol = h.login("alice"), h.login("bob"), h.login("carol")
    call_between(h, alice, bob)
    h.send(carol, initiate("call-0002", "alice"))
    for conn in (alice, carol):
        h.send(conn, {"type": "room_join", "room": "lobby"})
        h.send(conn, {"type": "presence_subscribe", "users": ["bob", "dave"]})
    h.send(alice, {"type": "room_broadcast", "room": "lobby", "data": {"n": [1, "two", None]}})
    h.send(bob, {"type": "presence_set", "status": "dnd"})
    store = h.switchboard.store
    assert isinstance(store, LocalStore)
    return store


def test_every_record_of_a_busy_server_encodes_to_the_same_value() -> None:
    store = busy_store()
    records = [
        *store.sessions.values(),
        *store.users.values(),
        *store.calls.values(),
        *store.rooms.values(),
    ]
    assert {type(record).__name__ for record in records} == {"Session", "User", "Call", "Room"}
    for record in records:
        again = decode_record(type(record), encode_record(record))
        assert value_of(again) == value_of(record)


@pytest.mark.single_process("it reads a session's replay, which a cluster keeps in its outbox")
def test_a_session_comes_back_with_its_bounds() -> None:
    """What a session keeps few of stays few: its recently ended calls are still bounded."""
    store = busy_store()
    session = next(iter(store.sessions.values()))
    session.recently_ended = deque((f"call-{n:04d}" for n in range(5)), RECENTLY_ENDED_CALLS)
    again = decode_record(Session, encode_record(session))
    assert isinstance(again.recently_ended, deque)
    assert again.recently_ended.maxlen == RECENTLY_ENDED_CALLS
    assert again.replay is not None and list(again.replay) == list(session.replay or ())
