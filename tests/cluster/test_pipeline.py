"""A node's `Pipeline`: many events per round trip, each connection's in order, the exclusive
ones alone, over the in-memory backend (`PipelineHarness`, stepped by hand)."""

from __future__ import annotations

from callbox.cluster.backend import ClusterUnavailable
from tests.cluster.harness import PipelineHarness
from tests.core.harness import Wire, call_between, initiate


def candidate(call_id: str, to: str, n: int) -> Wire:
    return {
        "type": "ice_candidate",
        "call_id": call_id,
        "to": to,
        "candidate": {"candidate": f"c{n}", "sdpMid": "0"},
    }


def calls_from_node_1(h: PipelineHarness, count: int) -> list[tuple[int, int, str]]:
    """`count` calls, each caller on node 1 and its callee on node 2: (caller, callee, id).
    Each caller has relayed once, so node 1's cache holds what a relay reads as it is now (the
    callee's answer, on node 2, changed the call): the relays of the tests commit at once."""
    calls = []
    for n in range(count):
        caller, callee = h.login_on(1, f"caller{n}"), h.login_on(2, f"callee{n}")
        call_id = f"call-{n:04}"
        call_between(h, caller, callee, call_id)
        h.send(caller, candidate(call_id, f"callee{n}", -1))
        h.take_all(callee)
        calls.append((caller, callee, call_id))
    return calls


def run_node(h: PipelineHarness, node: int) -> None:
    while node in h.busy():
        h.step(node)


def test_relays_of_many_connections_commit_in_one_round_trip() -> None:
    h = PipelineHarness(max_in_flight=64)
    calls = calls_from_node_1(h, 5)
    h.stepping = True
    for caller, _, call_id in calls:
        h.send(caller, candidate(call_id, h.user_of[caller].replace("caller", "callee"), 0))
    run_node(h, 1)
    assert h.batches == [5]
    for _, callee, _ in calls:
        h.expect(callee, "ice_candidate", candidate={"candidate": "c0", "sdpMid": "0"})


def test_a_connections_messages_run_one_at_a_time_in_order() -> None:
    h = PipelineHarness(max_in_flight=64)
    [(caller, callee, call_id)] = calls_from_node_1(h, 1)
    h.stepping = True
    for n in range(3):
        h.send(caller, candidate(call_id, "callee0", n))
    run_node(h, 1)
    assert h.batches == [1, 1, 1]
    got = [m["candidate"]["candidate"] for m in h.take_all(callee)]
    assert got == ["c0", "c1", "c2"]


def test_an_exclusive_event_waits_for_the_others_and_runs_alone() -> None:
    h = PipelineHarness(max_in_flight=64)
    (caller0, _, call0), (caller1, _, call1) = calls_from_node_1(h, 2)
    h.place_next = 1
    newcomer = h.open()
    h.stepping = True
    h.send(caller0, candidate(call0, "callee0", 0))
    h.send(newcomer, {"type": "hello", "user_id": "newcomer"})  # no session yet: exclusive
    h.send(caller1, candidate(call1, "callee1", 0))
    pipeline = h.pipelines[1]
    h.step(1)  # takes the first relay in
    h.step(1)  # the hello may not start beside it: the relay's commit goes instead
    assert h.batches == [1]
    assert pipeline.idle
    h.step(1)  # the hello starts, alone
    assert not pipeline.idle
    assert not pipeline.offer(h.queued[1][0])[0]  # the second relay may not start beside it
    run_node(h, 1)
    assert h.batches[-1] == 1  # the second relay, after the hello
    h.expect(newcomer, "welcome")


def test_answers_in_one_batch_that_conflict_are_run_again() -> None:
    """Two invitees answer at once on one node: both answers change the call, so the second
    transaction of the batch conflicts and its event runs again, on the first's result."""
    h = PipelineHarness(max_in_flight=64)
    alice = h.login_on(1, "alice")
    bob, carol = h.login_on(2, "bob"), h.login_on(2, "carol")
    h.send(alice, initiate("call-0001", "bob", "carol"))
    h.take_all(bob)
    h.take_all(carol)
    h.take_all(alice)
    h.stepping = True
    for invitee in (bob, carol):
        h.send(invitee, {"type": "call_answer", "call_id": "call-0001"})
    run_node(h, 2)
    assert h.batches[0] == 2
    assert h.batches[-1] == 1  # the one that conflicted, alone at last
    assert h.unavailable == 0
    accepted = [(m["by"], m["seq"]) for m in h.take_all(alice) if m["type"] == "call_accepted"]
    assert sorted(accepted) == [("bob", 2), ("carol", 3)] or sorted(accepted) == [
        ("bob", 3),
        ("carol", 2),
    ]
    assert h.switchboard.call_state("call-0001") == "active"


def test_events_given_up_leave_nothing_for_the_next() -> None:
    """The store out of reach: the events waiting for it are given up (the shell answers
    `unavailable`); what they drew and read is gone, and the next events run as if they had
    never been."""
    h = PipelineHarness(max_in_flight=64)
    h.stepping = True
    h.place_next = 1
    first = h.open()
    run_node(h, 1)
    h.send(first, {"type": "hello", "user_id": "alice"})
    pipeline = h.pipelines[1]
    h.step(1)  # the hello starts, and waits for a load
    assert pipeline.loads() is not None
    [given_up] = pipeline.failed(ClusterUnavailable("out of reach"))
    assert isinstance(given_up.error, ClusterUnavailable)
    assert given_up.actions == []
    assert pipeline.idle
    h.send(first, {"type": "hello", "user_id": "alice"})
    run_node(h, 1)
    welcome = h.take(first)
    assert welcome["type"] == "welcome"
    assert h.backend.records[f"session:{welcome['session_id']}"]
