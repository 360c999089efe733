"""Bugs the protocol model (test_model.py) found, each as the shortest deterministic story."""

from __future__ import annotations

from callbox.core.actions import GraceTimer

from .harness import Harness, call_between, initiate


def test_a_refused_resume_takes_the_old_sessions_open_connection_with_it() -> None:
    """A resume the server cannot honour ends the session its token names; if that session's
    connection is still open (half-open, say), the connection must go too (4002), as it does
    for an honoured resume. It used to stay linked to the ended session: its loss then started
    a grace timer for a session that no longer existed, and what arrived on it acted for it."""
    h = Harness()
    old = h.login("bob")
    session_id = h.welcome_of[old]["session_id"]
    new = h.resume("bob", h.welcome_of[old]["resume_token"], 7)  # last_seq ahead: refused
    h.expect(new, "welcome", resumed=False)
    assert h.closed.get(old) == (4002, "session taken over")
    h.send(old, initiate("call-0001", "alice"))  # still in flight from the old connection
    assert h.open_calls == set()
    h.drop(old)
    assert GraceTimer(session_id) not in h.timers
    h.send(new, {"type": "bye"})
    assert set(h.switchboard.statistics().values()) == {0}
    assert h.timers == {}


def test_a_refused_call_join_leaves_no_ringing_party_behind() -> None:
    """A room member busy on this device who `call_join`s the room's call is refused
    (`user_busy`), and a refusal changes nothing. It used to admit the member first (party
    ringing, with no device rung and no ring timeout), so the call waited for it forever: alone
    after the last invitee declined, the caller's call never ended and kept the user indexed."""
    h = Harness()
    ann, bob, dan, eve = h.login("ann"), h.login("bob"), h.login("dan"), h.login("eve")
    for conn in (ann, bob, dan):
        h.send(conn, {"type": "room_join", "room": "room-1"})
    call_between(h, dan, eve, "call-other")
    media = {"audio": True, "video": True}
    h.send(ann, {"type": "call_initiate", "call_id": "call-room", "room": "room-1", "media": media})
    h.send(dan, {"type": "call_join", "call_id": "call-room", "rid": "j"})
    h.take_all(ann)
    assert h.take_all(dan)[-1]["code"] == "user_busy"
    h.send(bob, {"type": "call_reject", "call_id": "call-room", "reason": "declined"})
    h.expect(ann, "call_rejected", by="bob")
    h.expect(ann, "call_ended", call_id="call-room", reason="rejected")
    assert h.open_calls == {"call-other"}
