"""Calls, resumes and sequences across the nodes of a cluster, over the in-memory backend."""

from __future__ import annotations

from callbox.cluster.node import node_of
from tests.cluster.harness import ClusterHarness
from tests.core.harness import call_between, initiate


def test_a_call_between_two_nodes() -> None:
    h = ClusterHarness()
    alice = h.login_on(1, "alice")
    bob = h.login_on(2, "bob")
    assert node_of(alice) != node_of(bob)
    h.send(alice, initiate("call-0001", "bob"))
    h.expect(alice, "call_ringing", call_id="call-0001", seq=1)
    h.expect(bob, "call_incoming", call_id="call-0001", seq=1)
    h.send(bob, {"type": "call_answer", "call_id": "call-0001"})
    h.expect(alice, "call_accepted", by="bob", seq=2)
    h.expect(bob, "call_accepted", by="bob", seq=2)
    h.send(bob, {"type": "sdp_offer", "call_id": "call-0001", "to": "alice", "sdp": "v=0"})
    h.expect(alice, "sdp_offer", sdp="v=0", seq=3)
    h.send(alice, {"type": "hangup", "call_id": "call-0001"})
    h.expect(alice, "call_ended", reason="hangup", seq=4)
    h.expect(bob, "call_ended", reason="hangup", seq=3)


def test_resume_on_another_node_replays_what_was_missed() -> None:
    h = ClusterHarness()
    alice = h.login_on(1, "alice")
    bob = h.login_on(2, "bob")
    call_between(h, alice, bob)
    token = h.welcome_of[bob]["resume_token"]
    h.drop(bob)
    for n in range(3):
        h.send(
            alice,
            {
                "type": "ice_candidate",
                "call_id": "call-0001",
                "to": "bob",
                "candidate": {"candidate": f"c{n}", "sdpMid": "0"},
            },
        )
    h.place_next = 3
    again = h.resume("bob", token, last_seq=2)
    welcome = h.take(again)
    assert welcome["resumed"] is True
    replayed = h.take_all(again)
    assert [m["seq"] for m in replayed] == [3, 4, 5]
    assert [m["candidate"]["candidate"] for m in replayed] == ["c0", "c1", "c2"]
    h.send(alice, {"type": "hangup", "call_id": "call-0001"})
    h.expect(again, "call_ended", seq=6)


def test_busy_holds_across_nodes() -> None:
    h = ClusterHarness()
    alice, bob, carol = (h.login(user) for user in ("alice", "bob", "carol"))
    assert len({node_of(c) for c in (alice, bob, carol)}) == 3
    call_between(h, alice, bob)
    h.send(carol, initiate("call-0002", "bob"))
    ended = h.take_all(carol)[-1]
    assert ended["type"] == "call_ended" and ended["reason"] == "busy", ended


def test_an_ended_call_leaves_no_timer_armed_in_the_store() -> None:
    """A call's expiry warning and duration cap are armed in the store when it is answered; its
    end disarms them there, as it cancels them on the node that ends it. Left armed, they would
    stay in the store (Redis: the `timers` set, a key without expiry) until their deadline, an
    hour by default, for a node to fire them for nothing (bench/chaos.py found them left)."""
    h = ClusterHarness()
    alice = h.login_on(1, "alice")
    bob = h.login_on(2, "bob")
    call_between(h, alice, bob)
    assert {name.split()[0] for name in h.backend.timers} == {"warn", "cap"}
    h.send(bob, {"type": "hangup", "call_id": "call-0001"})
    h.expect(alice, "call_ended", reason="hangup")
    assert h.backend.timers == {}


def test_a_message_from_a_connection_taken_over_elsewhere_is_not_applied() -> None:
    """alice's node (1) is frozen (SIGSTOP) with her messages in its queue; her client resumes
    on node 3, which takes the session over and tells node 1 to close her old connection
    (4002). Node 1 wakes and runs the queue before it hears of the close: the session's record
    names her new connection, so what the old one sent is not applied (it would reach bob
    after what she sent since), and the old connection is closed 4002 there and then, as a
    single process does at the takeover."""
    h = ClusterHarness()
    alice = h.login_on(1, "alice")
    bob = h.login_on(2, "bob")
    call_between(h, alice, bob)
    token = h.welcome_of[alice]["resume_token"]
    h.place_next = 3
    again = h.resume("alice", token, last_seq=2)
    h.expect(again, "welcome", resumed=True)
    assert h.closed[alice] == (4002, "session taken over")
    offer = {"type": "sdp_offer", "call_id": "call-0001", "to": "bob"}
    h.send(again, {**offer, "sdp": "v=sent after the resume"})
    h.expect(bob, "sdp_offer", sdp="v=sent after the resume")
    h.send(alice, {**offer, "sdp": "v=sent before, run late"})  # node 1's queue, after waking
    h.quiet(bob)
    assert h.closed[alice] == (4002, "session taken over")


def test_a_message_from_a_connection_whose_node_was_taken_for_dead_is_not_applied() -> None:
    """alice's node (1) is frozen past its lease: node 2 takes it for dead and detaches her
    session (its grace starts). Node 1 wakes and runs her queued message before it learns:
    not applied, and her connection is closed 1012, so that her client resumes."""
    h = ClusterHarness()
    alice = h.login_on(1, "alice")
    bob = h.login_on(2, "bob")
    call_between(h, alice, bob)
    session_id = h.welcome_of[alice]["session_id"]
    now = h.now
    h._run(h.nodes[2], lambda sb: sb.connection_gone_elsewhere(alice, session_id, now))
    h.send(alice, {"type": "sdp_offer", "call_id": "call-0001", "to": "bob", "sdp": "v=late"})
    h.quiet(bob)
    assert h.closed[alice] == (1012, "node restarting")
