"""Rooms, room broadcasts, room calls and presence, driven without sockets."""

from __future__ import annotations

import pytest

from callbox.core.states import CallState

from .harness import Harness, call_between


@pytest.fixture
def h() -> Harness:
    return Harness()


def join(h: Harness, conn: int, room: str = "lobby") -> dict[str, object]:
    h.send(conn, {"type": "room_join", "room": room})
    return h.expect(conn, "room_joined", room=room)


# Rooms --------------------------------------------------------------------------------------------


def test_join_tells_the_members_and_the_joiner(h: Harness) -> None:
    a, b = h.login("a"), h.login("b")
    h.send(a, {"type": "room_join", "room": "lobby", "rid": "j"})
    h.expect(a, "room_joined", members=["a"], rid="j")
    assert join(h, b)["members"] == ["a", "b"]
    h.expect(a, "room_member_joined", user_id="b")
    h.quiet(a, b)


def test_a_second_device_of_a_member_is_not_a_new_member(h: Harness) -> None:
    a, b1, b2 = h.login("a"), h.login("b"), h.login("b")
    join(h, a), join(h, b1)
    h.take_all(a)
    assert join(h, b2)["members"] == ["a", "b"]
    h.quiet(a)
    h.send(b1, {"type": "room_leave", "room": "lobby"})
    h.expect(b1, "room_left")
    h.quiet(a)
    h.send(b2, {"type": "room_leave", "room": "lobby", "rid": "bye"})
    h.expect(b2, "room_left", rid="bye")
    h.expect(a, "room_member_left", user_id="b")


def test_broadcasts_reach_every_other_member_in_send_order(h: Harness) -> None:
    a, b, c = h.login("a"), h.login("b"), h.login("c")
    for conn in (a, b, c):
        join(h, conn)
    h.take_all(a), h.take_all(b)
    for n in range(5):
        h.send(a, {"type": "room_broadcast", "room": "lobby", "data": {"n": n}})
    for conn in (b, c):
        messages = h.take_all(conn)
        assert [m["data"] for m in messages] == [{"n": n} for n in range(5)]
        assert {m["from"] for m in messages} == {"a"}
    h.quiet(a)


def test_room_errors(h: Harness) -> None:
    h = Harness(max_rooms_per_session=1, max_room_members=2, max_broadcast_bytes=64)
    a, b, c = h.login("a"), h.login("b"), h.login("c")
    h.send(a, {"type": "room_broadcast", "room": "lobby", "data": 1, "rid": "r"})
    h.expect(a, "error", code="not_in_room", path="/room", rid="r")
    join(h, a), join(h, b)
    h.take_all(a)
    h.send(c, {"type": "room_join", "room": "lobby"})
    h.expect(c, "error", code="room_full", path="/room")
    h.send(a, {"type": "room_join", "room": "other"})
    h.expect(a, "error", code="limit_reached", path="/room")
    h.send(a, {"type": "room_broadcast", "room": "lobby", "data": "x" * 100})
    h.expect(a, "error", code="message_too_large", path="/data")
    h.send(a, {"type": "room_leave", "room": "nowhere"})
    h.expect(a, "error", code="not_in_room")
    h.quiet(b)


def test_broadcast_rate_is_limited() -> None:
    h = Harness(broadcasts_per_second=2)
    a, b = h.login("a"), h.login("b")
    join(h, a), join(h, b)
    h.take_all(a)
    for n in range(5):
        h.send(a, {"type": "room_broadcast", "room": "lobby", "data": n})
    assert len(h.take_all(b)) == 4  # a burst of twice the rate
    h.expect(a, "error", code="rate_limited")
    h.advance(0.5)
    h.send(a, {"type": "room_broadcast", "room": "lobby", "data": 5})
    assert [m["data"] for m in h.take_all(b)] == [5]


def test_membership_survives_the_grace_period_and_ends_after_it(h: Harness) -> None:
    a, b = h.login("a"), h.login("b")
    join(h, a), join(h, b)
    h.take_all(a)
    h.drop(b)
    h.advance(9)
    h.quiet(a)
    h.advance(1)
    h.expect(a, "room_member_left", user_id="b")
    assert h.switchboard.statistics()["rooms"] == 1


def test_room_call_rings_every_other_member_and_members_may_join_late(h: Harness) -> None:
    a, b, c = h.login("a"), h.login("b"), h.login("c")
    join(h, a), join(h, b)
    h.take_all(a)
    room_call = {"type": "call_initiate", "call_id": "room-call-1", "room": "lobby"}
    h.send(a, {**room_call, "media": {"audio": True, "video": False}})
    h.expect(a, "call_ringing", to=["b"])
    h.expect(b, "call_incoming", call_id="room-call-1")
    h.send(b, {"type": "call_answer", "call_id": "room-call-1"})
    h.take_all(a), h.take_all(b)
    assert join(h, c)["call_id"] == "room-call-1"
    h.take_all(a), h.take_all(b)
    h.send(c, {"type": "call_join", "call_id": "room-call-1"})
    h.expect(c, "call_accepted", by="c", participants=["a", "b", "c"])
    assert h.types(a) == ["call_accepted", "participant_joined"]
    h.send(a, {**room_call, "call_id": "room-call-2", "media": {"audio": True, "video": False}})
    h.expect(a, "error", code="call_exists", path="/room")
    for conn in (a, b, c):
        h.send(conn, {"type": "hangup", "call_id": "room-call-1"})
    assert h.switchboard.call_state("room-call-1") is None
    h.take_all(a), h.take_all(b), h.take_all(c)
    h.send(c, {"type": "room_join", "room": "lobby"})
    assert "call_id" not in h.expect(c, "room_joined")


def test_outsiders_cannot_join_a_room_call(h: Harness) -> None:
    a, b, eve = h.login("a"), h.login("b"), h.login("eve")
    join(h, a), join(h, b)
    media = {"audio": True, "video": False}
    h.send(a, {"type": "call_initiate", "call_id": "room-call-1", "room": "lobby", "media": media})
    h.send(eve, {"type": "call_join", "call_id": "room-call-1"})
    h.expect(eve, "error", code="not_in_call")
    assert h.switchboard.call_state("room-call-1") is CallState.RINGING


# Presence ---------------------------------------------------------------------------------------


def statuses(h: Harness, conn: int) -> list[tuple[str, str]]:
    return [(m["user_id"], m["status"]) for m in h.take_all(conn)]


def test_presence_through_a_whole_lifecycle(h: Harness) -> None:
    watcher = h.login("w")
    h.send(watcher, {"type": "presence_subscribe", "users": ["a", "b"], "rid": "s"})
    first = h.take_all(watcher)
    assert [(m["user_id"], m["status"], m["last_seen"], m["rid"]) for m in first] == [
        ("a", "offline", None, "s"),
        ("b", "offline", None, "s"),
    ]
    a, b = h.login("a"), h.login("b")
    resume_token = h.welcome_of[a]["resume_token"]
    assert statuses(h, watcher) == [("a", "online"), ("b", "online")]
    h.send(a, {"type": "presence_set", "status": "away"})
    assert statuses(h, watcher) == [("a", "away")]
    media = {"audio": True, "video": False}
    h.send(a, {"type": "call_initiate", "call_id": "call-0001", "to": ["b"], "media": media})
    assert statuses(h, watcher) == [("a", "in_call")]  # b is only ringing
    h.send(b, {"type": "call_answer", "call_id": "call-0001"})
    assert statuses(h, watcher) == [("b", "in_call")]
    h.send(b, {"type": "hangup", "call_id": "call-0001"})
    assert sorted(statuses(h, watcher)) == [("a", "away"), ("b", "online")]
    last_seq = h.take_all(a)[-1]["seq"]
    h.drop(a)
    h.advance(5)
    again = h.open()
    h.send(again, {"type": "hello", "user_id": "a", "resume": resume_token, "last_seq": last_seq})
    h.expect(again, "welcome", resumed=True)
    h.advance(60)
    h.quiet(watcher)  # no offline flap: the session was back within its grace period
    h.send(b, {"type": "bye"})
    gone = h.take(watcher)
    assert (gone["user_id"], gone["status"], gone["last_seen"]) == (
        "b",
        "offline",
        int(h.wall * 1000),
    )


def test_last_seen_is_the_unix_time_passed_with_the_event(h: Harness) -> None:
    """The core reads no clock: `last_seen` is the `wall` of the event that ended the session,
    even when it has nothing to do with the monotonic `now` (a wall clock set back, here)."""
    watcher, a = h.login("w"), h.login("a")
    h.send(watcher, {"type": "presence_subscribe", "users": ["a"]})
    h.take_all(watcher)
    h.wall_offset = 123_456.789 - h.now
    h.send(a, {"type": "bye"})
    assert h.expect(watcher, "presence", status="offline")["last_seen"] == 123_456_789
    h.send(watcher, {"type": "presence_subscribe", "users": ["a"], "rid": "again"})
    assert h.expect(watcher, "presence", rid="again")["last_seen"] == 123_456_789


@pytest.mark.parametrize("ending", ["bye", "grace"])
def test_a_session_that_watches_its_peer_ends_cleanly(
    h: Harness, ending: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Ending a session that watches the user it is in a call with ends the call, which changes
    that user's presence: the ended session is no longer told (it has stopped watching first),
    nothing fails, and the peer sees its call end. Found by the browser tests, where the demo page
    watches the user it calls."""
    a, b = h.login("a"), h.login("b")
    for conn, peer in ((a, "b"), (b, "a")):
        h.send(conn, {"type": "presence_subscribe", "users": [peer]})
    call_between(h, a, b)
    h.take_all(a)
    h.take_all(b)
    if ending == "bye":
        h.send(a, {"type": "bye"})
    else:
        h.drop(a)
        h.advance(h.config.reconnect_grace_ms / 1000)
    assert sorted(m["type"] for m in h.take_all(b)) == ["call_ended", "presence"]
    assert h.switchboard.call_state("call-0001") is None
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_most_available_device_wins(h: Harness) -> None:
    watcher = h.login("w")
    h.send(watcher, {"type": "presence_subscribe", "users": ["a"]})
    h.take_all(watcher)
    phone, laptop = h.login("a"), h.login("a")
    assert statuses(h, watcher) == [("a", "online")]
    h.send(phone, {"type": "presence_set", "status": "dnd"})
    h.quiet(watcher)  # the laptop is still online
    h.send(laptop, {"type": "presence_set", "status": "away"})
    assert statuses(h, watcher) == [("a", "away")]
    h.send(laptop, {"type": "bye"})
    assert statuses(h, watcher) == [("a", "dnd")]


def test_subscriptions_are_bounded_and_cleaned_up() -> None:
    h = Harness(max_presence_subscriptions=2)
    watcher = h.login("w")
    h.send(watcher, {"type": "presence_subscribe", "users": ["a", "b", "c"]})
    h.expect(watcher, "error", code="limit_reached", path="/users")
    h.send(watcher, {"type": "presence_subscribe", "users": ["a", "b"]})
    h.take_all(watcher)
    h.send(watcher, {"type": "presence_unsubscribe", "users": ["a"]})
    h.login("a")
    h.quiet(watcher)
    assert h.switchboard.statistics()["watched_users"] == 1
    h.send(watcher, {"type": "bye"})
    assert h.switchboard.statistics()["watched_users"] == 0


def test_call_initiate_needs_exactly_one_of_to_and_room(h: Harness) -> None:
    a = h.login("a")
    media = {"audio": True, "video": False}
    for extra in ({}, {"to": ["b"], "room": "lobby"}):
        h.send(a, {"type": "call_initiate", "call_id": "call-0001", "media": media, **extra})
        error = h.expect(a, "error", code="invalid_message")
        assert "exactly one of 'to' or 'room'" in error["message"]
