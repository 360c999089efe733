"""The webhook events the core emits (`Notify`), and ringing a user whose app is closed.

Pure: a switchboard, no sockets, time as numbers. Every event emitted is checked against
schemas/webhooks/<type>.json by the harness (as the body the shell would POST).
"""

from __future__ import annotations

import base64

import pytest

from callbox.core.states import CallState

from .harness import Harness, initiate

WEBHOOKS = {
    "webhook_urls": ("http://127.0.0.1:9/hooks",),
    "webhook_secret": "whsec_" + base64.b64encode(b"k" * 32).decode(),
}
RING_S = 30


def harness(**settings: object) -> Harness:
    return Harness(**WEBHOOKS, ring_timeout_ms=RING_S * 1000, **settings)


def ms(h: Harness) -> int:
    """The harness's Unix time now, in ms, as the events carry it."""
    return round(h.wall * 1000)


def test_without_a_webhook_the_core_emits_nothing_and_refuses_an_offline_callee() -> None:
    h = Harness()
    a, b = h.login("a"), h.login("b")
    h.send(a, initiate("call-0001", "b"))
    h.send(b, {"type": "call_answer", "call_id": "call-0001"})
    h.send(a, {"type": "hangup", "call_id": "call-0001"})
    h.take_all(a)
    h.send(a, initiate("call-0002", "nobody"))
    h.expect(a, "call_rejected", by="nobody", reason="offline")
    h.expect(a, "call_ended", reason="offline")
    assert h.notified == []


def test_a_one_to_one_call_tells_the_backend_each_step() -> None:
    h = harness()
    a, b = h.login("a"), h.login("b")
    h.send(a, initiate("call-0001", "b", metadata={"subject": "hi"}))
    initiated_at = ms(h)
    assert h.events() == [
        (
            "call.initiated",
            {
                "call_id": "call-0001",
                "caller": "a",
                "to": ["b"],
                "media": {"audio": True, "video": True},
                "room": None,
                "metadata": {"subject": "hi"},
            },
        ),
        ("participant.joined", {"call_id": "call-0001", "user_id": "a"}),
    ]
    h.advance(3)
    h.send(b, {"type": "call_answer", "call_id": "call-0001"})
    started_at = ms(h)
    assert started_at == initiated_at + 3000
    assert h.events() == [
        ("call.answered", {"call_id": "call-0001", "by": "b", "participants": ["a", "b"]}),
        ("participant.joined", {"call_id": "call-0001", "user_id": "b"}),
    ]
    h.advance(5)
    h.send(a, {"type": "hangup", "call_id": "call-0001"})
    assert h.events() == [
        ("participant.left", {"call_id": "call-0001", "user_id": "a", "reason": "hangup"}),
        ("participant.left", {"call_id": "call-0001", "user_id": "b", "reason": "call_ended"}),
        (
            "call.ended",
            {
                "call_id": "call-0001",
                "reason": "hangup",
                "by": "a",
                "initiator": "a",
                "participants": ["a", "b"],
                "started_at": started_at,
                "ended_at": started_at + 5000,
                "duration_ms": 5000,
            },
        ),
    ]


def test_every_event_carries_the_wall_time_it_happened() -> None:
    h = harness()
    a, b = h.login("a"), h.login("b")
    h.send(a, initiate("call-0001", "b"))
    h.advance(2)
    h.send(b, {"type": "call_reject", "call_id": "call-0001", "reason": "declined"})
    times = [(notify.event_type, notify.at_ms) for notify in h.notified]
    assert times == [
        ("call.initiated", ms(h) - 2000),
        ("participant.joined", ms(h) - 2000),
        ("participant.left", ms(h)),  # the caller, still in the call as it ends
        ("call.ended", ms(h)),
    ]
    ended = h.events()[-1][1]
    assert ended["reason"] == "rejected"
    assert (ended["started_at"], ended["duration_ms"], ended["participants"]) == (None, 0, ["a"])


def test_a_group_member_who_disconnects_leaves_and_the_filter_holds() -> None:
    h = harness(webhook_events=("participant.left", "call.ended"), reconnect_grace_ms=1000)
    a, b, c = (h.login(user) for user in "abc")
    h.send(a, initiate("group-001", "b", "c"))
    h.send(b, {"type": "call_answer", "call_id": "group-001"})
    h.send(c, {"type": "call_answer", "call_id": "group-001"})
    assert h.events() == []
    h.drop(c)
    h.advance(1)
    assert h.events() == [
        ("participant.left", {"call_id": "group-001", "user_id": "c", "reason": "disconnected"})
    ]


def test_with_ringing_offline_filtered_out_an_offline_callee_is_refused_at_once() -> None:
    h = harness(webhook_events=("call.ended",))
    a = h.login("a")
    h.send(a, initiate("call-0001", "b"))
    h.expect(a, "call_rejected", by="b", reason="offline")
    h.expect(a, "call_ended", reason="offline")
    assert [event for event, _ in h.events()] == ["call.ended"]


def test_an_offline_callee_rings_and_answers_from_a_device_that_connects() -> None:
    h = harness()
    a = h.login("a")
    h.send(a, initiate("call-0001", "b", rid="r1"))
    h.expect(a, "call_ringing", to=["b"], offline=["b"], rid="r1")
    h.quiet(a)
    ringing = [data for event, data in h.events() if event == "call.ringing_offline"]
    assert ringing == [
        {
            "call_id": "call-0001",
            "caller": "a",
            "callee": "b",
            "media": {"audio": True, "video": True},
            "metadata": None,
            "expires_at": ms(h) + RING_S * 1000,
        }
    ]
    assert h.switchboard.call_state("call-0001") is CallState.RINGING
    h.advance(2)
    b = h.login("b")
    h.expect(b, "call_incoming", call_id="call-0001", expires_in_ms=(RING_S - 2) * 1000)
    h.send(b, {"type": "call_answer", "call_id": "call-0001"})
    h.expect(a, "call_accepted", by="b", participants=["a", "b"])
    h.expect(b, "call_accepted", by="b")
    h.advance(RING_S)  # the ring timer was disarmed by the answer
    h.quiet(a, b)
    assert h.switchboard.call_state("call-0001") is CallState.ACTIVE


def test_an_offline_callee_who_never_comes_ends_a_one_to_one_call_offline() -> None:
    h = harness()
    a = h.login("a")
    h.send(a, initiate("call-0001", "b"))
    h.take_all(a)
    h.events()
    h.advance(RING_S - 1)
    h.quiet(a)
    h.advance(1)
    h.expect(a, "call_rejected", by="b", reason="offline")
    h.expect(a, "call_ended", reason="offline", by="b")
    assert h.switchboard.call_state("call-0001") is None
    events = h.events()
    assert events[-1][0] == "call.ended"
    assert events[-1][1]["reason"] == "offline"


def test_a_callee_reached_but_not_answering_times_out_as_usual() -> None:
    h = harness()
    a = h.login("a")
    h.send(a, initiate("call-0001", "b"))
    h.take_all(a)
    h.advance(2)
    b = h.login("b")
    h.take_all(b)
    h.advance(RING_S)
    h.expect(b, "call_ended", reason="ring_timeout")
    h.expect(a, "call_rejected", by="b", reason="ring_timeout")
    h.expect(a, "call_ended", reason="ring_timeout")


def test_in_a_group_call_an_offline_invitee_drops_out_alone_at_the_ring_timeout() -> None:
    h = harness()
    a, b = h.login("a"), h.login("b")
    h.send(a, initiate("group-001", "b", "c"))
    h.expect(a, "call_ringing", to=["b", "c"], offline=["c"])
    h.expect(b, "call_incoming", participants=["a", "b", "c"])
    h.send(b, {"type": "call_answer", "call_id": "group-001"})
    h.take_all(a), h.take_all(b)
    h.advance(RING_S)
    h.expect(a, "call_rejected", by="c", reason="offline")
    h.expect(b, "call_rejected", by="c", reason="offline")
    h.quiet(a, b)
    assert h.switchboard.call_state("group-001") is CallState.ACTIVE


def test_an_offline_user_invited_into_a_room_call_rings_offline() -> None:
    h = harness()
    a, b = h.login("a"), h.login("b")
    for conn in (a, b):
        h.send(conn, {"type": "room_join", "room": "standup"})
    media = {"audio": True, "video": False}
    h.send(
        a, {"type": "call_initiate", "call_id": "room-call-1", "room": "standup", "media": media}
    )
    h.send(b, {"type": "call_join", "call_id": "room-call-1"})
    h.take_all(a), h.take_all(b)
    initiated = dict(h.events())["call.initiated"]
    assert (initiated["room"], initiated["to"]) == ("standup", ["b"])
    h.send(a, {"type": "call_invite", "call_id": "room-call-1", "to": ["z"]})
    h.expect(a, "call_ringing", to=["z"], offline=["z"])
    assert [data["callee"] for event, data in h.events() if event == "call.ringing_offline"] == [
        "z"
    ]
    z = h.login("z")
    h.expect(z, "call_incoming", call_id="room-call-1")
    h.send(z, {"type": "call_answer", "call_id": "room-call-1"})
    assert h.types(a) == ["call_accepted", "participant_joined"]


@pytest.mark.parametrize("settings", [{}, {"webhook_events": ("call.ringing_offline",)}])
def test_offline_ringing_is_on_exactly_when_its_event_is_sent(settings: dict[str, object]) -> None:
    h = harness(**settings)
    assert h.config.offline_ringing
    assert not Harness().config.offline_ringing
    assert not harness(webhook_events=("call.initiated",)).config.offline_ringing
