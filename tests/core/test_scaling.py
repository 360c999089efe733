"""State is sharded: an operation's cost does not grow with what else the server holds.

Counted, not timed: cProfile's count of Python function calls for one operation is deterministic,
so "a broadcast to m members costs O(m), whatever else exists" becomes "the count is the same with
10 and with 300 unrelated users, rooms and calls", and "O(m)" becomes "it grows linearly in m".
"""

from __future__ import annotations

import cProfile
import gc
import pstats
from collections.abc import Callable

from callbox.core.store import LocalStore

from .harness import Harness, call_between, initiate

MEDIA = {"audio": True, "video": False}


def function_calls(operation: Callable[[], None]) -> int:
    """The Python calls `operation` makes. Garbage is collected first and the collector is off
    meanwhile: finalizers run by a collection (of what earlier tests left, such as a subprocess's
    `Popen.__del__`) would be counted too, and the counts would depend on which tests ran."""
    gc.collect()
    gc.disable()
    profiler = cProfile.Profile()
    try:
        profiler.enable()
        operation()
        profiler.disable()
    finally:
        gc.enable()
    return pstats.Stats(profiler).total_calls  # type: ignore[attr-defined, no-any-return]


class CountedHarness(Harness):
    """What a server runs: not the tracking store the other core tests check transactions
    with, nor misses injected into it (`--inject-misses`)."""

    store_type = LocalStore
    inject_misses = False


def populated(unrelated: int) -> Harness:
    """A server with `unrelated` busy users: each in its own room, watched, and half in calls."""
    h = CountedHarness()
    conns = [h.login(f"bystander-{n}") for n in range(unrelated)]
    for n, conn in enumerate(conns):
        h.send(conn, {"type": "room_join", "room": f"room-{n}"})
        h.send(conn, {"type": "presence_subscribe", "users": [f"bystander-{(n + 1) % unrelated}"]})
    for n in range(0, unrelated - 1, 2):
        call_between(h, conns[n], conns[n + 1], call_id=f"bystander-call-{n}")
    for conn in conns:
        h.take_all(conn)
    return h


def cost_of_room_broadcast(unrelated: int, members: int) -> int:
    h = populated(unrelated)
    conns = [h.login(f"member-{n}") for n in range(members)]
    for conn in conns:
        h.send(conn, {"type": "room_join", "room": "lobby"})
    message = {"type": "room_broadcast", "room": "lobby", "data": {"hello": "world"}}
    return function_calls(lambda: h.send(conns[0], message))


def cost_of_relay(unrelated: int) -> int:
    h = populated(unrelated)
    alice, bob = h.login("alice"), h.login("bob")
    call_between(h, alice, bob)
    offer = {"type": "sdp_offer", "call_id": "call-0001", "to": "bob", "sdp": "v=0"}
    return function_calls(lambda: h.send(alice, offer))


def cost_of_presence_change(unrelated: int, watchers: int) -> int:
    h = populated(unrelated)
    for n in range(watchers):
        h.send(h.login(f"watcher-{n}"), {"type": "presence_subscribe", "users": ["alice"]})
    alice = h.login("alice")
    return function_calls(lambda: h.send(alice, {"type": "presence_set", "status": "away"}))


def cost_of_a_whole_call(unrelated: int) -> int:
    h = populated(unrelated)
    alice, bob = h.login("alice"), h.login("bob")

    def call() -> None:
        h.send(alice, initiate("call-0001", "bob"))
        h.send(bob, {"type": "call_answer", "call_id": "call-0001"})
        h.send(bob, {"type": "hangup", "call_id": "call-0001"})

    return function_calls(call)


def test_room_broadcast_cost_ignores_other_rooms_and_grows_with_members() -> None:
    cost_of_room_broadcast(10, members=4)  # the first in a process builds codec functions
    assert cost_of_room_broadcast(10, members=4) == cost_of_room_broadcast(300, members=4)
    by_members = [cost_of_room_broadcast(10, members=m) for m in (4, 8, 16)]
    assert by_members[2] - by_members[1] == 2 * (by_members[1] - by_members[0])  # linear in m


def test_relay_cost_ignores_other_calls() -> None:
    assert cost_of_relay(10) == cost_of_relay(300)


def test_presence_change_cost_ignores_other_users_and_grows_with_watchers() -> None:
    assert cost_of_presence_change(10, watchers=3) == cost_of_presence_change(300, watchers=3)
    by_watchers = [cost_of_presence_change(10, watchers=w) for w in (2, 4, 8)]
    assert by_watchers[2] - by_watchers[1] == 2 * (by_watchers[1] - by_watchers[0])


def test_call_lifecycle_cost_ignores_other_calls() -> None:
    assert cost_of_a_whole_call(10) == cost_of_a_whole_call(300)
