"""Bugs the protocol model (test_model.py) found, each as the shortest deterministic story."""

from __future__ import annotations

from callbox.core.actions import GraceTimer

from .harness import Harness, initiate


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
