"""Group (mesh) calls on the same state machine: the outline's "who is told what" rules."""

from __future__ import annotations

import pytest

from callbox.core.states import CallState

from .harness import Harness, initiate


@pytest.fixture
def h() -> Harness:
    return Harness(ring_timeout_ms=10_000)


def test_group_call_rings_everyone_and_grows_as_they_answer(h: Harness) -> None:
    a, b, c, d = (h.login(u) for u in "abcd")
    h.send(a, initiate("group-001", "b", "c", "d", rid="g"))
    h.expect(a, "call_ringing", to=["b", "c", "d"], rid="g")
    for conn in (b, c, d):
        h.expect(conn, "call_incoming", participants=["a", "b", "c", "d"], **{"from": "a"})
    h.send(b, {"type": "call_answer", "call_id": "group-001"})
    h.expect(a, "call_accepted", by="b", participants=["a", "b"])
    h.expect(b, "call_accepted", by="b", participants=["a", "b"])
    h.quiet(a, b)
    h.send(c, {"type": "call_join", "call_id": "group-001"})
    for conn in (a, b, c):
        h.expect(conn, "call_accepted", by="c", participants=["a", "b", "c"])
    h.expect(a, "participant_joined", user_id="c")
    h.expect(b, "participant_joined", user_id="c")
    h.quiet(a, b, c, d)


def test_a_declining_invitee_drops_out_alone(h: Harness) -> None:
    a, b, c = (h.login(u) for u in "abc")
    h.send(a, initiate("group-001", "b", "c"))
    h.take_all(a), h.take_all(b), h.take_all(c)
    h.send(b, {"type": "call_reject", "call_id": "group-001", "reason": "declined"})
    h.expect(b, "call_ended", reason="rejected", by="b")
    h.expect(a, "call_rejected", by="b", reason="declined")
    h.quiet(a, c)
    assert h.switchboard.call_state("group-001") is CallState.RINGING
    h.send(c, {"type": "call_answer", "call_id": "group-001"})
    assert h.types(a) == ["call_accepted"]


def test_an_invitee_who_never_answers_times_out_without_ending_the_call(h: Harness) -> None:
    a, b, c = (h.login(u) for u in "abc")
    h.send(a, initiate("group-001", "b", "c"))
    h.send(b, {"type": "call_answer", "call_id": "group-001"})
    h.take_all(a), h.take_all(b), h.take_all(c)
    h.advance(10)
    h.expect(c, "call_ended", reason="ring_timeout", by="c")
    h.expect(a, "call_rejected", by="c", reason="ring_timeout")
    h.expect(b, "call_rejected", by="c", reason="ring_timeout")
    assert h.switchboard.call_state("group-001") is CallState.ACTIVE


def test_leaving_is_alone_until_one_remains(h: Harness) -> None:
    a, b, c = (h.login(u) for u in "abc")
    h.send(a, initiate("group-001", "b", "c"))
    h.send(b, {"type": "call_answer", "call_id": "group-001"})
    h.send(c, {"type": "call_answer", "call_id": "group-001"})
    h.take_all(a), h.take_all(b), h.take_all(c)
    h.send(a, {"type": "hangup", "call_id": "group-001"})
    h.expect(a, "call_ended", reason="hangup", by="a")
    h.expect(b, "participant_left", user_id="a", reason="hangup")
    h.expect(c, "participant_left", user_id="a", reason="hangup")
    h.send(b, {"type": "sdp_offer", "call_id": "group-001", "to": "c", "sdp": "v=0"})
    h.expect(c, "sdp_offer", **{"from": "b"})
    h.send(c, {"type": "hangup", "call_id": "group-001"})
    h.expect(c, "call_ended", reason="hangup", by="c")
    h.expect(b, "call_ended", reason="hangup", by="c")
    assert h.open_calls == set()


def test_last_joined_with_invitations_ringing_keeps_waiting(h: Harness) -> None:
    a, b, c = (h.login(u) for u in "abc")
    h.send(a, initiate("group-001", "b"))
    h.send(b, {"type": "call_answer", "call_id": "group-001"})
    h.send(a, {"type": "call_invite", "call_id": "group-001", "to": ["c"], "rid": "inv"})
    h.take_all(b)
    assert h.types(a)[-1] == "call_ringing"
    h.expect(c, "call_incoming", participants=["a", "b", "c"])
    h.send(b, {"type": "hangup", "call_id": "group-001"})
    h.take_all(b)
    h.expect(a, "participant_left", user_id="b")
    assert h.switchboard.call_state("group-001") is CallState.RINGING
    h.send(c, {"type": "call_answer", "call_id": "group-001"})
    h.expect(a, "call_accepted", by="c", participants=["a", "c"])


def test_disconnect_of_a_participant_is_participant_left_disconnected(h: Harness) -> None:
    a, b, c = (h.login(u) for u in "abc")
    h.send(a, initiate("group-001", "b", "c"))
    h.send(b, {"type": "call_answer", "call_id": "group-001"})
    h.send(c, {"type": "call_answer", "call_id": "group-001"})
    h.take_all(a), h.take_all(b), h.take_all(c)
    h.drop(c)
    h.advance(10)
    h.expect(a, "participant_left", user_id="c", reason="disconnected")
    h.expect(b, "participant_left", user_id="c", reason="disconnected")


def test_max_participants_is_enforced_with_call_full() -> None:
    h = Harness(max_participants=3)
    a, b, c, d = (h.login(u) for u in "abcd")
    h.send(a, initiate("group-001", "b", "c", "d"))
    h.expect(a, "error", code="call_full")
    h.send(a, initiate("group-001", "b", "c"))
    h.send(b, {"type": "call_answer", "call_id": "group-001"})
    h.send(c, {"type": "call_answer", "call_id": "group-001"})
    h.take_all(a), h.take_all(b), h.take_all(c)
    h.send(a, {"type": "call_invite", "call_id": "group-001", "to": ["d"], "rid": "x"})
    h.expect(a, "error", code="call_full", rid="x")
    h.send(b, {"type": "hangup", "call_id": "group-001"})
    h.expect(a, "participant_left", user_id="b")
    h.send(a, {"type": "call_invite", "call_id": "group-001", "to": ["b", "d"]})
    h.expect(a, "error", code="call_full")  # two joined + two more could never fit in three
    h.send(a, {"type": "call_invite", "call_id": "group-001", "to": ["d"]})
    h.send(a, {"type": "call_invite", "call_id": "group-001", "to": ["b"]})
    h.take_all(a), h.take_all(b), h.take_all(c), h.take_all(d)
    h.send(d, {"type": "call_answer", "call_id": "group-001"})
    h.take_all(a), h.take_all(c), h.take_all(d)
    h.send(b, {"type": "call_answer", "call_id": "group-001", "rid": "late"})
    h.expect(b, "call_ended", reason="call_full", by="b")
    h.expect(b, "error", code="call_full", rid="late")
    h.expect(a, "call_rejected", by="b", reason="call_full")


def test_invite_refuses_someone_already_in_the_call(h: Harness) -> None:
    a, b = h.login("a"), h.login("b")
    h.send(a, initiate("group-001", "b"))
    h.send(b, {"type": "call_answer", "call_id": "group-001"})
    h.take_all(a)
    h.send(a, {"type": "call_invite", "call_id": "group-001", "to": ["c", "b"]})
    h.expect(a, "error", code="invalid_state", path="/to/1")


def test_duration_cap_ends_a_group_call_for_all() -> None:
    h = Harness(max_call_duration_ms=60_000, call_expiring_warning_ms=10_000)
    a, b, c = (h.login(u) for u in "abc")
    h.send(a, initiate("group-001", "b", "c"))
    h.send(b, {"type": "call_answer", "call_id": "group-001"})
    h.send(c, {"type": "call_answer", "call_id": "group-001"})
    h.take_all(a), h.take_all(b), h.take_all(c)
    h.advance(60)
    for conn in (a, b, c):
        assert h.types(conn) == ["call_expiring", "call_ended"]
    assert h.open_calls == set()
