"""A bug in one handler costs one `error internal`: not the connection, not anyone else's messages.

And a move the state table has no row for is a refusal (`invalid_state`), not a bug.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NoReturn

import orjson
import pytest

from callbox.core import states, switchboard
from callbox.core.actions import RingTimer
from callbox.core.calls import Calling
from callbox.core.presence import Watchers
from callbox.core.relay import Relay
from callbox.core.rooms import Rooms
from callbox.core.sessions import Sessions
from callbox.core.states import CallEvent, CallState
from callbox.core.switchboard import Switchboard
from callbox.messages import CLIENT_MESSAGES

from .harness import Harness, call_between, initiate

EXAMPLES = Path(__file__).parents[2] / "protocol" / "examples" / "valid" / "client"

HANDLER_OF: dict[str, tuple[Any, str]] = {
    "hello": (Sessions, "hello"),
    "ping": (switchboard, "Pong"),  # answered inline: the reply's constructor is what fails
    "ack": (Sessions, "acknowledge"),
    "bye": (Switchboard, "_end_session"),
    "call_initiate": (Calling, "initiate"),
    "call_answer": (Calling, "answer"),
    "call_join": (Calling, "answer"),
    "call_reject": (Calling, "reject"),
    "call_invite": (Calling, "invite"),
    "hangup": (Calling, "hangup"),
    "sdp_offer": (Relay, "relay"),
    "sdp_answer": (Relay, "relay"),
    "ice_candidate": (Relay, "relay"),
    "room_join": (Rooms, "join"),
    "room_leave": (Rooms, "leave"),
    "room_broadcast": (Rooms, "broadcast"),
    "presence_subscribe": (Watchers, "subscribe"),
    "presence_unsubscribe": (Watchers, "unsubscribe"),
    "presence_set": (Watchers, "refresh"),
}
"""What handles each client message, made to fail in turn: the method of the core module it is
dispatched to, or (`ping`) the module-level name its inline handling calls."""


def fail(*args: Any, **kwargs: Any) -> NoReturn:
    raise RuntimeError("a bug, forced by the test")


def test_every_client_message_has_a_handler_to_break() -> None:
    assert set(HANDLER_OF) == set(CLIENT_MESSAGES)


@pytest.mark.parametrize("type_", sorted(HANDLER_OF))
def test_a_failing_handler_answers_its_sender_internal_and_nobody_else(
    type_: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    h = Harness()
    alice, bob, carol = h.login("alice"), h.login("bob"), h.login("carol")
    call_between(h, alice, bob)
    for conn in (alice, carol):
        h.send(conn, {"type": "room_join", "room": "lobby"})
    h.send(carol, {"type": "presence_subscribe", "users": ["alice"]})
    sender = h.open() if type_ == "hello" else alice
    bystanders = (bob, carol)
    for conn in (sender, *bystanders):
        h.take_all(conn)
    message = orjson.loads((EXAMPLES / f"{type_}.json").read_bytes())
    message |= {"rid": f"r-{type_}"} | ({"user_id": "dave"} if type_ == "hello" else {})
    monkeypatch.setattr(*HANDLER_OF[type_], fail)

    with caplog.at_level(logging.ERROR, logger="callbox.core"):
        h.send(sender, message)

    [answer] = h.take_all(sender)
    assert (answer["type"], answer["code"], answer["rid"]) == ("error", "internal", f"r-{type_}")
    assert sender not in h.closed
    for conn in bystanders:
        h.quiet(conn)
        assert conn not in h.closed
    [logged] = caplog.records
    assert logged.exc_info is not None and logged.exc_info[0] is RuntimeError

    monkeypatch.undo()  # the connection still works
    if type_ == "hello":
        h.send(sender, {"type": "hello", "user_id": "dave", "rid": "after"})
        h.expect(sender, "welcome", rid="after")
    else:
        h.send(sender, {"type": "ping", "ts": 1, "rid": "after"})
        h.expect(sender, "pong", rid="after")


def test_a_failing_timer_is_logged_and_nobody_is_told(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A timer has no sender to answer: the failure is logged, and does not escape (in the
    shell, it would take the call's nursery down with it)."""
    h = Harness()
    alice, bob = h.login("alice"), h.login("bob")
    h.send(alice, initiate("call-0001", "bob"))
    h.take_all(alice)
    h.take_all(bob)
    monkeypatch.setattr(Calling, "_drop_out", fail)
    with caplog.at_level(logging.ERROR, logger="callbox.core"):
        h.advance(h.config.ring_timeout_ms / 1000)
    [logged] = caplog.records
    assert logged.exc_info is not None and logged.exc_info[0] is RuntimeError
    assert RingTimer("call-0001", "bob") not in h.timers
    h.quiet(alice, bob)
    assert h.closed == {}


def test_a_move_the_state_table_lacks_is_refused_invalid_state_and_changes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A table miss reached past the hand-written checks is answered, not a crash: here the
    table is made to lack `ringing + join`, so answering a ringing call misses it."""
    h = Harness()
    alice, bob = h.login("alice"), h.login("bob")
    h.send(alice, initiate("call-0001", "bob"))
    h.take_all(alice)
    h.take_all(bob)
    without_join = dict(states.CALL_TRANSITIONS)
    without_join[CallState.RINGING] = {
        event: outcome
        for event, outcome in states.CALL_TRANSITIONS[CallState.RINGING].items()
        if event is not CallEvent.JOIN
    }
    monkeypatch.setattr(states, "CALL_TRANSITIONS", without_join)

    h.send(bob, {"type": "call_answer", "call_id": "call-0001", "rid": "a"})

    h.expect(bob, "error", code="invalid_state", rid="a")
    assert bob not in h.closed
    h.quiet(alice, bob)
    assert h.switchboard.call_state("call-0001") is CallState.RINGING


def test_a_failing_admin_event_is_logged_and_changes_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The admin API's events have no sender either: a bug in one is logged and contained (in
    a cluster, it would take the node's event task down), and the call goes on."""
    h = Harness()
    alice, bob = h.login("alice"), h.login("bob")
    call_between(h, alice, bob)
    monkeypatch.setattr(Calling, "terminate", fail)
    now, wall = h.now, h.wall
    with caplog.at_level(logging.ERROR, logger="callbox.core"):
        h.server_event(lambda sb: sb.terminate_call("call-0001", now, wall))
        h.server_event(lambda sb: sb.remove_user("bob", now, wall))
    assert [record.getMessage() for record in caplog.records] == [
        "internal error terminating call 'call-0001'",
        "internal error removing user 'bob'",
    ]
    h.quiet(alice, bob)
    assert h.closed == {} and h.open_calls == {"call-0001"}
