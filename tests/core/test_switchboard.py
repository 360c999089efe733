"""The switchboard driven without sockets: sessions, 1:1 calls, relays, glare, resume, errors."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from callbox.core.actions import DurationCapTimer, GraceTimer, IceRefreshTimer, RingTimer
from callbox.core.states import CallState

from .harness import Harness, call_between, initiate

SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\n"
CANDIDATE = {
    "candidate": "candidate:1 1 udp 2122260223 10.0.0.1 50000 typ host",
    "sdpMid": "0",
    "sdpMLineIndex": 0,
}


@pytest.fixture
def h() -> Harness:
    return Harness()


# Connection and session ---------------------------------------------------------------------


def test_welcome_then_session_messages_numbered_from_one(h: Harness) -> None:
    conn = h.open()
    h.send(conn, {"type": "hello", "user_id": "alice", "rid": "r1"})
    welcome = h.expect(
        conn, "welcome", user_id="alice", resumed=False, rid="r1", heartbeat_ms=15000
    )
    assert "seq" not in welcome
    assert welcome["ice_servers"] == [{"urls": ["stun:stun.example.org"]}]
    assert welcome["limits"]["max_call_duration_ms"] == 3_600_000
    assert welcome["limits"]["ring_timeout_ms"] == 30_000
    h.send(conn, {"type": "call_answer", "call_id": "nonexistent-1", "rid": "r2"})
    h.expect(conn, "error", code="unknown_call", seq=1, rid="r2", path="/call_id")
    h.send(conn, {"type": "ping", "ts": 5.5, "rid": "r3"})
    pong = h.expect(conn, "pong", ts=5.5, rid="r3")
    assert "seq" not in pong
    h.send(conn, {"type": "hangup", "call_id": "nonexistent-2"})
    h.expect(conn, "error", code="unknown_call", seq=2)


def test_nothing_but_hello_before_welcome(h: Harness) -> None:
    conn = h.open()
    h.send(conn, {"type": "ping", "rid": "early"})
    error = h.expect(conn, "error", code="not_authenticated", rid="early")
    assert "seq" not in error
    h.send(conn, {"type": "hello", "user_id": "alice"})
    h.expect(conn, "welcome", user_id="alice")
    assert conn not in h.closed


def test_second_hello_is_invalid_state(h: Harness) -> None:
    conn = h.login("alice")
    h.send(conn, {"type": "hello", "user_id": "alice", "rid": "again"})
    h.expect(conn, "error", code="invalid_state", rid="again")


def test_auth_failure_closes_with_4001(h: Harness) -> None:
    h.refused_users.add("mallory")
    conn = h.open()
    h.send(conn, {"type": "hello", "user_id": "mallory", "rid": "x"})
    h.expect(conn, "error", code="auth_failed", rid="x", message="token signature invalid")
    assert h.closed[conn][0] == 4001


@pytest.mark.parametrize(
    ("data", "code", "path"),
    [
        (b"{not json", "invalid_json", None),
        (
            b'{"type": "call_answer", "call_id": "bad id!", "rid": "r"}',
            "invalid_message",
            "/call_id",
        ),
        (b'{"type": "teleport", "rid": "r"}', "unknown_type", "/type"),
        (
            b'{"type": "call_initiate", "call_id": "abcdefgh", "to": ["bob"],'
            b' "media": {"audio": 1, "video": true}, "rid": "r"}',
            "invalid_message",
            "/media/audio",
        ),
    ],
)
def test_bad_input_gets_an_error_and_the_connection_survives(
    h: Harness, data: bytes, code: str, path: str | None
) -> None:
    conn = h.login("alice")
    h.send(conn, data)
    error = h.expect(conn, "error", code=code)
    assert error.get("path") == path
    if code != "invalid_json":
        assert error["rid"] == "r"
    h.send(conn, {"type": "ping"})
    h.expect(conn, "pong")
    assert conn not in h.closed


def test_binary_frames_are_refused(h: Harness) -> None:
    conn = h.login("alice")
    h.receive_binary(conn)
    h.expect(conn, "error", code="invalid_message")


def test_rate_limit_refuses_excess_with_rid(h: Harness) -> None:
    h = Harness(messages_per_second=2, message_burst=3)
    conn = h.login("alice")  # the hello took one token
    for _ in range(2):
        h.send(conn, {"type": "ping"})
    h.send(conn, {"type": "ping", "rid": "too-many"})
    assert h.types(conn) == ["pong", "pong", "error"]
    h.advance(1.0)
    h.send(conn, {"type": "ping"})
    h.expect(conn, "pong")


def test_session_limit_per_user() -> None:
    h = Harness(max_sessions_per_user=2)
    h.login("alice")
    h.login("alice")
    conn = h.open()
    h.send(conn, {"type": "hello", "user_id": "alice"})
    h.expect(conn, "error", code="session_limit")
    assert h.closed[conn][0] == 1008


# 1:1 calls ------------------------------------------------------------------------------------


def test_one_to_one_call_lifecycle(h: Harness) -> None:
    alice, bob = h.login("alice"), h.login("bob")
    h.send(alice, initiate("call-0001", "bob", rid="i1", metadata={"subject": "hi"}))
    h.expect(alice, "call_ringing", call_id="call-0001", to=["bob"], rid="i1")
    h.expect(
        bob,
        "call_incoming",
        call_id="call-0001",
        participants=["alice", "bob"],
        expires_in_ms=30_000,
        metadata={"subject": "hi"},
        media={"audio": True, "video": True},
    )
    assert h.take_all(alice) == [] and h.open_calls == {"call-0001"}
    assert RingTimer("call-0001", "bob") in h.timers

    h.send(bob, {"type": "call_answer", "call_id": "call-0001", "rid": "a1"})
    h.expect(alice, "call_accepted", by="bob", participants=["alice", "bob"])
    h.expect(bob, "call_accepted", by="bob", participants=["alice", "bob"], rid="a1")
    assert RingTimer("call-0001", "bob") not in h.timers
    assert DurationCapTimer("call-0001") in h.timers
    assert h.switchboard.call_state("call-0001") is CallState.ACTIVE

    h.send(bob, {"type": "sdp_offer", "call_id": "call-0001", "to": "alice", "sdp": SDP})
    h.expect(alice, "sdp_offer", sdp=SDP, call_id="call-0001", **{"from": "bob"})
    h.send(alice, {"type": "sdp_answer", "call_id": "call-0001", "to": "bob", "sdp": SDP})
    h.expect(bob, "sdp_answer", sdp=SDP, **{"from": "alice"})
    h.send(
        alice,
        {"type": "ice_candidate", "call_id": "call-0001", "to": "bob", "candidate": CANDIDATE},
    )
    h.expect(bob, "ice_candidate", candidate=CANDIDATE, **{"from": "alice"})
    h.send(alice, {"type": "ice_candidate", "call_id": "call-0001", "to": "bob", "candidate": None})
    h.expect(bob, "ice_candidate", candidate=None)

    h.send(alice, {"type": "hangup", "call_id": "call-0001", "reason": "normal", "rid": "h1"})
    h.expect(alice, "call_ended", reason="hangup", by="alice", detail="normal", rid="h1")
    h.expect(bob, "call_ended", reason="hangup", by="alice", detail="normal")
    h.quiet(alice, bob)
    assert h.open_calls == set() and h.switchboard.call_state("call-0001") is None
    assert not any(getattr(k, "call_id", None) == "call-0001" for k in h.timers)


def test_decline_ends_for_both_sides(h: Harness) -> None:
    alice, bob = h.login("alice"), h.login("bob")
    h.send(alice, initiate("call-0001", "bob"))
    h.take_all(alice), h.take_all(bob)
    h.send(bob, {"type": "call_reject", "call_id": "call-0001", "reason": "declined", "rid": "no"})
    h.expect(bob, "call_ended", reason="rejected", by="bob", rid="no")
    h.expect(alice, "call_rejected", by="bob", reason="declined")
    h.expect(alice, "call_ended", reason="rejected", by="bob")
    h.quiet(alice, bob)
    assert h.open_calls == set()


def test_reject_busy_ends_with_busy(h: Harness) -> None:
    alice, bob = h.login("alice"), h.login("bob")
    h.send(alice, initiate("call-0001", "bob"))
    h.take_all(alice), h.take_all(bob)
    h.send(bob, {"type": "call_reject", "call_id": "call-0001", "reason": "busy"})
    assert [m["reason"] for m in h.take_all(alice)] == ["busy", "busy"]


def test_callee_in_another_call_is_busy(h: Harness) -> None:
    alice, bob, carol = h.login("alice"), h.login("bob"), h.login("carol")
    call_between(h, bob, carol)
    h.send(alice, initiate("call-0002", "bob", rid="x"))
    h.expect(alice, "call_rejected", by="bob", reason="busy", rid="x")
    h.expect(alice, "call_ended", call_id="call-0002", reason="busy", by="bob")
    h.quiet(alice, bob, carol)


def test_offline_callee(h: Harness) -> None:
    alice = h.login("alice")
    h.send(alice, initiate("call-0001", "bob"))
    assert [(m["type"], m["reason"]) for m in h.take_all(alice)] == [
        ("call_rejected", "offline"),
        ("call_ended", "offline"),
    ]
    assert h.open_calls == set()


def test_ring_timeout_ends_for_both() -> None:
    h = Harness(ring_timeout_ms=5_000)
    alice, bob = h.login("alice"), h.login("bob")
    h.send(alice, initiate("call-0001", "bob"))
    h.take_all(alice), h.take_all(bob)
    h.advance(4.9)
    h.quiet(alice, bob)
    h.advance(0.2)
    h.expect(bob, "call_ended", reason="ring_timeout")
    h.expect(alice, "call_rejected", reason="ring_timeout")
    h.expect(alice, "call_ended", reason="ring_timeout", by="bob")
    assert h.open_calls == set()


def test_duration_cap_warns_then_ends(h: Harness) -> None:
    alice, bob = h.login("alice"), h.login("bob")
    call_between(h, alice, bob)
    h.advance(3540 - 0.001)
    h.quiet(alice, bob)
    h.advance(0.001)
    h.expect(alice, "call_expiring", ends_in_ms=60_000)
    h.expect(bob, "call_expiring", ends_in_ms=60_000)
    h.advance(60)
    h.expect(alice, "call_ended", reason="max_duration")
    h.expect(bob, "call_ended", reason="max_duration")
    assert h.open_calls == set()


def test_hangup_by_caller_while_ringing_stops_every_device(h: Harness) -> None:
    alice, bob1, bob2 = h.login("alice"), h.login("bob"), h.login("bob")
    h.send(alice, initiate("call-0001", "bob"))
    h.take_all(alice)
    assert h.types(bob1) == h.types(bob2) == ["call_incoming"]
    h.send(alice, {"type": "hangup", "call_id": "call-0001"})
    h.expect(alice, "call_ended", reason="hangup")
    h.expect(bob1, "call_ended", reason="hangup", by="alice")
    h.expect(bob2, "call_ended", reason="hangup", by="alice")


def test_several_devices_first_answer_wins(h: Harness) -> None:
    alice, phone, laptop = h.login("alice"), h.login("bob"), h.login("bob")
    h.send(alice, initiate("call-0001", "bob"))
    h.take_all(alice), h.take_all(phone), h.take_all(laptop)
    h.send(laptop, {"type": "call_answer", "call_id": "call-0001"})
    h.expect(phone, "call_ended", reason="answered_elsewhere", by="bob")
    h.expect(laptop, "call_accepted", by="bob")
    h.expect(alice, "call_accepted", by="bob")
    h.send(alice, {"type": "sdp_offer", "call_id": "call-0001", "to": "bob", "sdp": SDP})
    h.expect(laptop, "sdp_offer")
    h.quiet(phone)
    h.send(phone, {"type": "call_answer", "call_id": "call-0001", "rid": "late"})
    h.expect(phone, "error", code="invalid_state", rid="late")


def test_a_device_connecting_while_ringing_rings_too(h: Harness) -> None:
    alice, bob1 = h.login("alice"), h.login("bob")
    h.send(alice, initiate("call-0001", "bob"))
    h.advance(10)
    bob2 = h.login("bob")
    h.expect(bob2, "call_incoming", call_id="call-0001", expires_in_ms=20_000)
    h.send(bob2, {"type": "call_answer", "call_id": "call-0001"})
    h.take_all(bob1)
    h.expect(bob2, "call_accepted")


# Glare ----------------------------------------------------------------------------------------


def test_glare_keeps_the_existing_call_when_its_id_is_lesser(h: Harness) -> None:
    alice, bob = h.login("alice"), h.login("bob")
    h.send(alice, initiate("aaaa-0001", "bob"))
    h.take_all(alice)
    h.expect(bob, "call_incoming", call_id="aaaa-0001")
    h.send(bob, initiate("bbbb-0002", "alice", rid="g"))
    h.expect(bob, "call_ended", call_id="bbbb-0002", reason="merged", rid="g")
    h.expect(bob, "call_accepted", call_id="aaaa-0001", by="bob", participants=["alice", "bob"])
    h.expect(alice, "call_accepted", call_id="aaaa-0001", by="bob")
    h.quiet(alice, bob)
    assert h.switchboard.call_state("aaaa-0001") is CallState.ACTIVE


def test_glare_merges_into_the_new_call_when_its_id_is_lesser(h: Harness) -> None:
    alice, bob = h.login("alice"), h.login("bob")
    h.send(alice, initiate("bbbb-0002", "bob"))
    h.take_all(alice), h.take_all(bob)
    h.send(bob, initiate("aaaa-0001", "alice", rid="g"))
    h.expect(alice, "call_ended", call_id="bbbb-0002", reason="merged")
    h.expect(bob, "call_ended", call_id="bbbb-0002", reason="merged")
    h.expect(alice, "call_accepted", call_id="aaaa-0001", by="alice", participants=["bob", "alice"])
    h.expect(bob, "call_accepted", call_id="aaaa-0001", by="alice", rid="g")
    h.quiet(alice, bob)
    assert h.open_calls == {"aaaa-0001"}
    h.send(alice, {"type": "sdp_offer", "call_id": "aaaa-0001", "to": "bob", "sdp": SDP})
    h.expect(bob, "sdp_offer", **{"from": "alice"})


# Relay membership and state ---------------------------------------------------------------------


def test_relays_only_between_members(h: Harness) -> None:
    alice, bob, eve = h.login("alice"), h.login("bob"), h.login("eve")
    call_between(h, alice, bob)
    h.send(eve, {"type": "sdp_offer", "call_id": "call-0001", "to": "bob", "sdp": SDP, "rid": "e"})
    h.expect(eve, "error", code="not_in_call", rid="e")
    h.send(eve, {"type": "sdp_offer", "call_id": "call-9999", "to": "bob", "sdp": SDP})
    h.expect(eve, "error", code="unknown_call")
    h.send(alice, {"type": "ice_candidate", "call_id": "call-0001", "to": "eve", "candidate": None})
    h.expect(alice, "error", code="not_in_call", path="/to")
    h.send(alice, {"type": "sdp_offer", "call_id": "call-0001", "to": "alice", "sdp": SDP})
    h.expect(alice, "error", code="not_in_call", path="/to")
    h.quiet(alice, bob, eve)


def test_out_of_state_messages_are_invalid_state(h: Harness) -> None:
    alice, bob = h.login("alice"), h.login("bob")
    h.send(alice, initiate("call-0001", "bob"))
    h.take_all(alice), h.take_all(bob)
    h.send(alice, {"type": "sdp_offer", "call_id": "call-0001", "to": "bob", "sdp": SDP})
    h.expect(alice, "error", code="invalid_state")
    h.send(bob, {"type": "sdp_answer", "call_id": "call-0001", "to": "alice", "sdp": SDP})
    h.expect(bob, "error", code="invalid_state")
    h.send(alice, {"type": "call_answer", "call_id": "call-0001"})
    h.expect(alice, "error", code="invalid_state", message="you have already joined call call-0001")
    h.send(bob, {"type": "call_answer", "call_id": "call-0001"})
    h.take_all(alice), h.take_all(bob)
    h.send(bob, {"type": "hangup", "call_id": "call-0001"})
    h.take_all(alice), h.take_all(bob)
    h.send(alice, {"type": "ice_candidate", "call_id": "call-0001", "to": "bob", "candidate": None})
    h.expect(alice, "error", code="invalid_state", path="/call_id")
    h.quiet(bob)


def test_initiate_refusals(h: Harness) -> None:
    alice, bob = h.login("alice"), h.login("bob")
    h.send(alice, initiate("call-0001", "alice"))
    h.expect(alice, "error", code="invalid_message", path="/to/0")
    h.send(alice, initiate("call-0001", *[f"user{i}" for i in range(8)]))
    h.expect(alice, "error", code="call_full")
    call_between(h, alice, bob)
    h.send(bob, initiate("call-0001", "carol"))
    h.expect(bob, "error", code="call_exists", path="/call_id")
    h.send(alice, initiate("call-0002", "carol"))
    h.expect(alice, "error", code="user_busy")


# Sessions outlive connections ------------------------------------------------------------------


def test_resume_replays_everything_after_last_seq(h: Harness) -> None:
    alice = h.login("alice")
    bob_conn = h.login("bob")
    token = h.welcome_of[bob_conn]["resume_token"]
    call_between(h, alice, bob_conn)  # bob's seq 1 (incoming) and 2 (accepted)
    h.drop(bob_conn)
    h.send(alice, {"type": "sdp_offer", "call_id": "call-0001", "to": "bob", "sdp": "v=0 one"})
    h.send(alice, {"type": "sdp_offer", "call_id": "call-0001", "to": "bob", "sdp": "v=0 two"})
    h.quiet(alice)
    h.advance(9)
    new = h.resume("bob", token, 1)
    welcome = h.expect(new, "welcome", resumed=True)
    assert welcome["resume_token"] != token
    replayed = h.take_all(new)
    assert [(m["type"], m["seq"]) for m in replayed] == [
        ("call_accepted", 2),
        ("sdp_offer", 3),
        ("sdp_offer", 4),
    ]
    assert GraceTimer(welcome["session_id"]) not in h.timers
    h.advance(60)
    h.quiet(alice)
    h.send(new, {"type": "sdp_answer", "call_id": "call-0001", "to": "alice", "sdp": SDP})
    h.expect(alice, "sdp_answer")


def test_peer_told_disconnected_only_when_grace_ends(h: Harness) -> None:
    alice, bob = h.login("alice"), h.login("bob")
    call_between(h, alice, bob)
    h.drop(bob)
    h.advance(9.999)
    h.quiet(alice)
    h.advance(0.001)
    h.expect(alice, "call_ended", reason="disconnected", by="bob")
    assert h.open_calls == set()


def test_resume_refused_when_history_is_gone(h: Harness) -> None:
    h = Harness(replay_buffer_messages=3)
    alice = h.login("alice")
    conn = h.login("bob")
    token = h.welcome_of[conn]["resume_token"]
    call_between(h, alice, conn)  # bob's seq 1 and 2, sent before the drop
    h.drop(conn)
    for n in range(3):  # seq 3, 4, 5: seq 1 and 2 make room for them
        h.send(alice, {"type": "sdp_offer", "call_id": "call-0001", "to": "bob", "sdp": f"v=0 {n}"})
    h.quiet(alice)
    h.send(alice, {"type": "sdp_offer", "call_id": "call-0001", "to": "bob", "sdp": "v=0 3"})
    h.expect(alice, "call_ended", reason="disconnected")  # seq 6 would push out unsent seq 3
    new = h.resume("bob", token, 5)
    h.expect(new, "welcome", resumed=False)


def test_a_session_that_received_more_than_the_replay_budget_still_resumes() -> None:
    # Issue 10, finding 1: the budget was spent on frames bob had long read, so the first
    # message while he was away ended his session.
    h, alice, bob, token = in_a_call()
    candidate = {"type": "ice_candidate", "call_id": "call-0001", "to": "bob", "candidate": None}
    for _ in range(h.config.replay_buffer_messages + 4):
        h.send(alice, candidate)
        h.advance(1 / h.config.messages_per_second)
    last_read = h.take_all(bob)[-1]["seq"]
    h.drop(bob)
    h.send(alice, offer("v=0 while away"))
    h.quiet(alice)
    new = h.resume("bob", token, last_read)
    h.expect(new, "welcome", resumed=True)
    h.expect(new, "sdp_offer", seq=last_read + 1, sdp="v=0 while away")
    h.quiet(new)


def test_an_ack_lets_the_server_drop_what_the_client_has_processed() -> None:
    h, alice, bob, token = in_a_call()  # bob's seq 1 and 2
    h.send(alice, offer("v=0 three"))
    h.send(bob, {"type": "ack", "last_seq": 2})
    h.take_all(bob)
    h.drop(bob)
    behind = h.resume("bob", token, 1)  # seq 2 is no longer held: acknowledged
    h.expect(behind, "welcome", resumed=False)


def test_an_ack_keeps_what_is_not_acknowledged_for_a_resume() -> None:
    h, alice, bob, token = in_a_call()
    h.send(alice, offer("v=0 three"))
    h.send(bob, {"type": "ack", "last_seq": 2})
    h.drop(bob)
    new = h.resume("bob", token, 2)
    h.expect(new, "welcome", resumed=True)
    h.expect(new, "sdp_offer", seq=3)


def test_an_ack_ahead_of_what_was_sent_is_refused() -> None:
    h, _alice, bob, _token = in_a_call()
    h.take_all(bob)
    h.send(bob, {"type": "ack", "last_seq": 3, "rid": "a"})
    h.expect(bob, "error", code="invalid_state", path="/last_seq", rid="a", seq=3)


def lose_the_welcome(h: Harness, user_id: str, token: str, last_seq: int) -> None:
    """Resume, and lose the connection before the client reads the `welcome`."""
    lost = h.resume(user_id, token, last_seq)
    assert h.take(lost)["resumed"] is True
    h.drop(lost)


def test_a_resume_whose_welcome_was_lost_succeeds_with_the_token_the_client_holds() -> None:
    # Issue 10, finding 2: every resume rotated the token, and the client never saw the new one.
    h, alice, bob, token = in_a_call()
    h.drop(bob)
    lose_the_welcome(h, "bob", token, 2)
    h.send(alice, offer("v=0 after the lost welcome"))
    again = h.resume("bob", token, 2)
    welcome = h.expect(again, "welcome", resumed=True)
    assert welcome["resume_token"] != token
    h.expect(again, "sdp_offer", seq=3)
    h.quiet(alice)


def test_the_replaced_token_resumes_only_once() -> None:
    h, _alice, bob, token = in_a_call()
    h.drop(bob)
    lose_the_welcome(h, "bob", token, 2)
    lose_the_welcome(h, "bob", token, 2)
    third = h.resume("bob", token, 2)
    h.expect(third, "welcome", resumed=False)


def test_the_replaced_token_is_good_for_a_grace_period_only() -> None:
    h, _alice, _bob, token = in_a_call()
    new = h.resume("bob", token, 2)  # takes over the open connection
    new_token = h.expect(new, "welcome", resumed=True)["resume_token"]
    h.advance(h.config.reconnect_grace_ms / 1000)
    h.drop(new)
    late = h.resume("bob", token, 2)
    h.expect(late, "welcome", resumed=False)
    h.take_all(late)
    assert "bob" in h.user_of.values()
    current = h.resume("bob", new_token, 2)
    h.expect(current, "welcome", resumed=True)


def test_resuming_with_the_new_token_retires_the_replaced_one() -> None:
    h, _alice, bob, token = in_a_call()
    h.drop(bob)
    second = h.resume("bob", token, 2)
    new_token = h.expect(second, "welcome", resumed=True)["resume_token"]
    h.drop(second)
    third = h.resume("bob", new_token, 2)
    h.expect(third, "welcome", resumed=True)
    h.drop(third)
    stale = h.resume("bob", token, 2)
    h.expect(stale, "welcome", resumed=False)


def test_the_replaced_token_never_resumes_another_users_session() -> None:
    h, _alice, bob, token = in_a_call()
    h.drop(bob)
    lose_the_welcome(h, "bob", token, 2)
    thief = h.resume("eve", token, 2)
    h.expect(thief, "welcome", resumed=False, user_id="eve")
    again = h.resume("bob", token, 2)
    h.expect(again, "welcome", resumed=True)


def in_a_call(**config: Any) -> tuple[Harness, int, int, str]:
    """alice and bob in an accepted call; bob's resume token."""
    h = Harness(**config)
    alice = h.login("alice")
    bob = h.login("bob")
    call_between(h, alice, bob)
    return h, alice, bob, h.welcome_of[bob]["resume_token"]


def offer(sdp: str) -> dict[str, str]:
    return {"type": "sdp_offer", "call_id": "call-0001", "to": "bob", "sdp": sdp}


def test_replay_bytes_bound_a_connected_session_oldest_first() -> None:
    h, alice, bob, token = in_a_call(replay_buffer_bytes=3000)  # bob's seq 1 and 2: small
    for n in range(3):  # seq 3, 4, 5: ~1,060 bytes each, so 5 pushes out 1, 2 and 3
        h.send(alice, offer(f"v=0 {n} " + "a" * 1000))
    assert [m["seq"] for m in h.take_all(bob)] == [3, 4, 5]
    h.drop(bob)
    stale = h.resume("bob", token, 2)
    h.expect(stale, "welcome", resumed=False)  # seq 3 is no longer held


def test_replay_bytes_keep_what_fits_for_a_resume() -> None:
    h, alice, bob, token = in_a_call(replay_buffer_bytes=3000)
    for n in range(3):
        h.send(alice, offer(f"v=0 {n} " + "a" * 1000))
    h.drop(bob)
    new = h.resume("bob", token, 3)
    h.expect(new, "welcome", resumed=True)
    assert [(m["seq"], m["sdp"][:5]) for m in h.take_all(new)] == [(4, "v=0 1"), (5, "v=0 2")]


def test_one_frame_over_the_replay_bytes_is_kept_alone_while_connected() -> None:
    h, alice, bob, token = in_a_call(replay_buffer_bytes=500)
    h.send(alice, offer("v=0 " + "a" * 1000))
    h.expect(bob, "sdp_offer", seq=3)
    h.drop(bob)
    new = h.resume("bob", token, 2)
    h.expect(new, "welcome", resumed=True)
    h.expect(new, "sdp_offer", seq=3)


def test_replay_bytes_passed_while_away_end_the_session() -> None:
    h, alice, bob, token = in_a_call(replay_buffer_bytes=3000)
    h.drop(bob)
    h.send(alice, offer("v=0 " + "a" * 1000))
    h.send(alice, offer("v=0 " + "b" * 1000))
    h.quiet(alice)  # two fit
    h.send(alice, offer("v=0 " + "c" * 1000))
    h.expect(alice, "call_ended", reason="disconnected")  # the third ended bob's session
    new = h.resume("bob", token, 2)
    h.expect(new, "welcome", resumed=False)


def test_resume_with_last_seq_ahead_is_a_new_session(h: Harness) -> None:
    conn = h.login("bob")
    token = h.welcome_of[conn]["resume_token"]
    h.drop(conn)
    new = h.resume("bob", token, 7)
    h.expect(new, "welcome", resumed=False)


def test_resume_never_crosses_users(h: Harness) -> None:
    conn = h.login("bob")
    token = h.welcome_of[conn]["resume_token"]
    thief = h.resume("eve", token, 0)
    h.expect(thief, "welcome", resumed=False, user_id="eve")
    assert conn not in h.closed


def test_resume_takes_over_a_connection_still_open(h: Harness) -> None:
    conn = h.login("bob")
    token = h.welcome_of[conn]["resume_token"]
    new = h.resume("bob", token, 0)
    h.expect(new, "welcome", resumed=True)
    assert h.closed[conn] == (4002, "session taken over")


def test_bye_ends_the_session_at_once(h: Harness) -> None:
    alice = h.login("alice")
    conn = h.login("bob")
    token = h.welcome_of[conn]["resume_token"]
    call_between(h, alice, conn)
    h.send(conn, {"type": "bye"})
    assert h.closed[conn] == (1000, "bye")
    h.expect(alice, "call_ended", reason="disconnected", by="bob")
    new = h.resume("bob", token, 2)
    h.expect(new, "welcome", resumed=False)


def test_ringing_device_lost_for_good_drops_out_offline(h: Harness) -> None:
    alice, bob = h.login("alice"), h.login("bob")
    h.send(alice, initiate("call-0001", "bob"))
    h.take_all(alice)
    h.drop(bob)
    h.advance(10)
    assert [(m["type"], m["reason"]) for m in h.take_all(alice)] == [
        ("call_rejected", "offline"),
        ("call_ended", "offline"),
    ]


def test_fresh_turn_credentials_are_pushed_before_expiry(h: Harness) -> None:
    h.ice_refresh = 3600.0
    conn = h.login("alice")
    session_timers = [k for k in h.timers if isinstance(k, IceRefreshTimer)]
    assert len(session_timers) == 1
    h.advance(3600)
    h.expect(conn, "ice_servers", seq=1, ice_servers=[{"urls": ["stun:stun.example.org"]}])
    h.advance(3600)
    h.expect(conn, "ice_servers", seq=2)


def test_state_is_cleaned_up_after_everything_ends(h: Harness) -> None:
    alice, bob = h.login("alice"), h.login("bob")
    call_between(h, alice, bob)
    h.send(alice, {"type": "bye"})
    h.send(bob, {"type": "bye"})
    assert set(h.switchboard.statistics().values()) == {0}
    assert h.timers == {}


def test_unknown_fields_are_refused(h: Harness) -> None:
    conn = h.login("alice")
    h.send(conn, orjson.dumps({"type": "ping", "tss": 1}))
    h.expect(conn, "error", code="invalid_message")


# A hostile or broken client costs little and disturbs no one ------------------------------------


def test_a_connection_without_hello_is_closed_after_the_hello_timeout(h: Harness) -> None:
    silent = h.open()
    h.advance(h.config.hello_timeout_ms / 1000 - 0.001)
    assert silent not in h.closed
    h.advance(0.001)
    assert h.closed[silent] == (4003, "hello timeout")
    assert h.switchboard.statistics()["connections"] == 0


def test_hello_stops_the_hello_timeout(h: Harness) -> None:
    conn = h.login("alice")
    h.advance(h.config.hello_timeout_ms / 1000 * 2)
    assert conn not in h.closed
    assert h.timers == {}


def test_a_connection_lost_before_hello_leaves_no_timer(h: Harness) -> None:
    conn = h.open()
    h.drop(conn)
    assert h.timers == {}


def test_invalid_messages_count_toward_the_rate_limit_and_are_not_explained_beyond_it() -> None:
    h = Harness(message_burst=5, messages_per_second=1)
    conn = h.login("alice")  # hello took one token
    bad = initiate("call-0001", 1, "bob") | {"rid": "bad"}
    for _ in range(6):
        h.send(conn, bad)
    errors = h.take_all(conn)
    assert [e["code"] for e in errors] == ["invalid_message"] * 4 + ["rate_limited"] * 2
    assert {e["rid"] for e in errors} == {"bad"}
    h.send(conn, b"\x00 not json")
    h.expect(conn, "error", code="rate_limited")
    h.advance(1)
    h.send(conn, b"\x00 not json")
    h.expect(conn, "error", code="invalid_json")


def test_binary_frames_count_toward_the_rate_limit() -> None:
    h = Harness(message_burst=2, messages_per_second=1)
    conn = h.login("alice")
    for _ in range(2):
        h.receive_binary(conn)
    assert [e["code"] for e in h.take_all(conn)] == ["invalid_message", "rate_limited"]


def fail_sign_in(h: Harness, address: str) -> int:
    conn = h.open(address)
    h.send(conn, {"type": "hello", "user_id": "mallory"})
    return conn


@pytest.mark.single_process("the sign-in throttle counts per node")
def test_failed_sign_ins_from_one_address_delay_its_next_hellos() -> None:
    h = Harness()
    h.refused_users.add("mallory")
    for _ in range(10):
        conn = fail_sign_in(h, "203.0.113.7")
        h.expect(conn, "error", code="auth_failed")
    held = fail_sign_in(h, "203.0.113.7")
    h.quiet(held)  # answered only after the delay
    other = h.open("198.51.100.1")
    h.send(other, {"type": "hello", "user_id": "alice"})
    h.expect(other, "welcome")
    h.advance(0.099)
    h.quiet(held)
    h.advance(0.001)
    h.expect(held, "error", code="auth_failed")
    assert h.closed[held] == (4001, "authentication failed")


@pytest.mark.single_process("the sign-in throttle counts per node")
def test_a_held_hello_is_answered_as_usual_and_a_second_one_is_refused() -> None:
    h = Harness()
    h.refused_users.add("mallory")
    for _ in range(10):
        fail_sign_in(h, "2001:db8::1")
    held = h.open("2001:db8::2")  # the same /64
    h.send(held, {"type": "hello", "user_id": "alice"})
    h.send(held, {"type": "hello", "user_id": "alice", "rid": "again"})
    h.expect(held, "error", code="invalid_state", rid="again")
    h.advance(h.config.hello_timeout_ms / 1000)  # no hello timeout while one is held
    h.expect(held, "welcome", user_id="alice")
    assert held not in h.closed
