"""What the deployer's admin API does to the core: ending a call, removing a user's sessions.

Driven as every core event is, without sockets or a clock (and, under `--inject-misses` or
`--cluster`, as a node of a cluster runs them)."""

from __future__ import annotations

import pytest

from callbox.core.actions import CLOSE_SESSION_TERMINATED, CloseCall, GraceTimer
from callbox.core.states import CallEvent, CallState, next_call_state
from callbox.core.store import LocalStore

from .harness import Harness, call_between, initiate


@pytest.fixture
def h() -> Harness:
    return Harness()


def terminate(h: Harness, call_id: str) -> None:
    now, wall = h.now, h.wall
    h.server_event(lambda sb: sb.terminate_call(call_id, now, wall))


def remove(h: Harness, user_id: str) -> None:
    now, wall = h.now, h.wall
    h.server_event(lambda sb: sb.remove_user(user_id, now, wall))


def test_terminating_an_active_call_ends_it_for_both_parties(h: Harness) -> None:
    alice, bob = h.login("alice"), h.login("bob")
    call_between(h, alice, bob)
    terminate(h, "call-0001")
    h.expect(alice, "call_ended", call_id="call-0001", reason="terminated", by=None)
    h.expect(bob, "call_ended", call_id="call-0001", reason="terminated", by=None)
    h.quiet(alice, bob)
    assert h.open_calls == set() and h.switchboard.call_state("call-0001") is None
    assert not any(getattr(key, "call_id", None) == "call-0001" for key in h.timers)


def test_terminating_a_ringing_call_stops_every_ringing_device(h: Harness) -> None:
    alice, bob1, bob2 = h.login("alice"), h.login("bob"), h.login("bob")
    h.send(alice, initiate("call-0001", "bob"))
    h.take_all(alice), h.take_all(bob1), h.take_all(bob2)
    terminate(h, "call-0001")
    for conn in (alice, bob1, bob2):
        h.expect(conn, "call_ended", reason="terminated")
    h.quiet(alice, bob1, bob2)
    # The devices are free again: bob may be called at once.
    h.send(alice, initiate("call-0002", "bob"))
    h.expect(alice, "call_ringing", to=["bob"])


def test_terminating_a_call_that_does_not_exist_changes_nothing(h: Harness) -> None:
    alice, bob = h.login("alice"), h.login("bob")
    call_between(h, alice, bob)
    terminate(h, "call-none")
    h.quiet(alice, bob)
    assert h.open_calls == {"call-0001"}


class SingleProcess(Harness):
    """Calls the switchboard directly, as the single process's shell does (never a cluster)."""

    store_type = LocalStore
    inject_misses = False


def test_terminate_call_names_the_call_it_closed() -> None:
    h = SingleProcess()
    alice, bob = h.login("alice"), h.login("bob")
    call_between(h, alice, bob)
    now, wall = h.now, h.wall
    assert CloseCall("call-0001", "terminated") in h.switchboard.terminate_call(
        "call-0001", now, wall
    )
    assert not any(
        isinstance(action, CloseCall) for action in h.switchboard.terminate_call("x", now, wall)
    )


def test_removing_a_user_ends_its_calls_and_closes_its_sockets_with_4004(h: Harness) -> None:
    alice, bob_phone, bob_laptop = h.login("alice"), h.login("bob"), h.login("bob")
    call_between(h, alice, bob_phone)
    h.take_all(bob_laptop)
    token = h.welcome_of[bob_phone]["resume_token"]
    remove(h, "bob")
    h.expect(alice, "call_ended", call_id="call-0001", reason="terminated", by="bob")
    h.quiet(alice)
    assert h.closed[bob_phone] == (CLOSE_SESSION_TERMINATED, "session terminated")
    assert h.closed[bob_laptop] == (CLOSE_SESSION_TERMINATED, "session terminated")
    assert h.switchboard.store.user("bob") is None
    assert h.open_calls == set()
    # The old token resumes nothing: a new session starts.
    again = h.resume("bob", token, 3)
    h.expect(again, "welcome", resumed=False)


def test_removing_a_user_in_its_grace_period_ends_the_session(h: Harness) -> None:
    alice, bob = h.login("alice"), h.login("bob")
    call_between(h, alice, bob)
    session_id = h.welcome_of[bob]["session_id"]
    h.drop(bob)
    assert GraceTimer(session_id) in h.timers
    remove(h, "bob")
    h.expect(alice, "call_ended", reason="terminated", by="bob")
    assert GraceTimer(session_id) not in h.timers
    assert h.switchboard.store.session(session_id) is None


def test_removing_a_ringing_invitee_ends_the_group_call_for_everyone(h: Harness) -> None:
    alice, bob, carol = h.login("alice"), h.login("bob"), h.login("carol")
    h.send(alice, initiate("call-0001", "bob", "carol"))
    h.send(bob, {"type": "call_answer", "call_id": "call-0001"})
    h.take_all(alice), h.take_all(bob), h.take_all(carol)
    remove(h, "carol")
    h.expect(alice, "call_ended", reason="terminated", by="carol")
    h.expect(bob, "call_ended", reason="terminated", by="carol")
    assert h.closed[carol][0] == CLOSE_SESSION_TERMINATED
    assert h.switchboard.call_state("call-0001") is None


def test_removing_an_unknown_user_does_nothing(h: Harness) -> None:
    alice = h.login("alice")
    remove(h, "nobody")
    h.quiet(alice)
    assert alice not in h.closed


def test_the_state_table_ends_a_call_on_terminate_from_any_live_state() -> None:
    for state in (CallState.RINGING, CallState.ACTIVE):
        assert next_call_state(state, CallEvent.TERMINATE, 2, 0) is CallState.ENDED
