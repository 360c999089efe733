"""A client may number its messages (`cseq`): each is applied once, and a resumed `welcome`
says the last one applied, so the client can send again what its lost connection swallowed."""

from __future__ import annotations

import pytest

from callbox.core.store import TrackingStore

from .harness import Harness, call_between, initiate


def resume(h: Harness, conn: int, user: str, last_seq: int) -> tuple[int, dict[str, object]]:
    """Drop `conn` and resume its session, having read up to `last_seq`; returns the new
    connection and its `welcome`."""
    token = str(h.welcome_of[conn]["resume_token"])
    h.drop(conn)
    again = h.resume(user, token, last_seq)
    return again, h.take(again)


def test_a_numbered_message_sent_again_is_ignored() -> None:
    h = Harness()
    alice = h.login("alice")
    h.send(alice, {"type": "room_join", "room": "lobby", "cseq": 1, "rid": "first"})
    h.expect(alice, "room_joined", rid="first")
    h.send(alice, {"type": "room_leave", "room": "lobby", "cseq": 1, "rid": "again"})
    h.send(alice, {"type": "ping", "rid": "p"})
    h.expect(alice, "pong", rid="p")  # and nothing before it: the room_leave was not applied
    assert h.switchboard.statistics()["rooms"] == 1


def test_numbers_need_only_increase() -> None:
    h = Harness()
    alice = h.login("alice")
    for cseq, status in ((5, "away"), (9, "dnd"), (7, "online")):
        h.send(alice, {"type": "presence_set", "status": status, "cseq": cseq})
    h.send(alice, {"type": "presence_subscribe", "users": ["alice"], "rid": "s"})
    h.expect(alice, "presence", status="dnd", rid="s")  # 7 came after 9: ignored


def test_a_resumed_welcome_says_the_last_number_applied_refusals_included() -> None:
    h = Harness()
    alice = h.login("alice")
    h.login("bob")
    h.send(alice, {"type": "presence_set", "status": "away", "cseq": 1})
    h.send(alice, {"type": "hangup", "call_id": "call-9999", "cseq": 2})  # refused: applied
    error = h.expect(alice, "error", code="unknown_call")
    again, welcome = resume(h, alice, "alice", error["seq"])
    assert (welcome["resumed"], welcome["last_cseq"]) == (True, 2)
    h.send(again, {"type": "presence_set", "status": "online", "cseq": 2})  # a late duplicate
    h.send(again, {"type": "ping", "rid": "p"})
    h.expect(again, "pong", rid="p")


def test_a_new_session_starts_numbering_afresh() -> None:
    h = Harness()
    alice = h.login("alice")
    assert "last_cseq" not in h.welcome_of[alice]
    h.send(alice, {"type": "presence_set", "status": "away", "cseq": 3})
    h.send(alice, {"type": "bye"})
    again = h.login("alice")
    h.send(again, {"type": "room_join", "room": "lobby", "cseq": 1, "rid": "r"})
    h.expect(again, "room_joined", rid="r")


def test_what_a_lost_connection_swallowed_is_applied_once_when_sent_again() -> None:
    """The client wrote cseq 3 just before its connection died and the server never read it:
    after the resume it is sent again, with 2 and 3 both (2 had been applied), and only 3
    reaches bob."""
    h = Harness()
    alice, bob = h.login("alice"), h.login("bob")
    call_between(h, alice, bob)
    h.take_all(bob)
    h.send(alice, {"type": "presence_subscribe", "users": ["bob"], "rid": "s", "cseq": 1})
    last_seq = h.expect(alice, "presence", rid="s")["seq"]
    relay = {"type": "ice_candidate", "call_id": "call-0001", "to": "bob", "candidate": None}
    h.send(alice, relay | {"cseq": 2})
    h.expect(bob, "ice_candidate")
    again, welcome = resume(h, alice, "alice", last_seq)
    assert welcome["last_cseq"] == 2
    h.send(again, relay | {"cseq": 2})
    h.send(again, relay | {"cseq": 3})
    assert h.types(bob) == ["ice_candidate"]


@pytest.mark.single_process("it reads the single process store's record of the transaction")
def test_a_numbered_relay_stays_a_read_only_event() -> None:
    """The number moves when the event commits, like `seq`: a relay copies nothing."""
    h = Harness()
    alice, bob = h.login("alice"), h.login("bob")
    h.send(alice, initiate("call-0001", "bob"))
    h.send(bob, {"type": "call_answer", "call_id": "call-0001"})
    relay = {"type": "ice_candidate", "call_id": "call-0001", "to": "bob", "candidate": None}
    h.send(alice, relay | {"cseq": 1})
    store = h.switchboard.store
    assert isinstance(store, TrackingStore) and store.committed is not None
    assert store.committed.writes == frozenset()
