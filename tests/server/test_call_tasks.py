"""A call's tasks end with it, whichever way it ends; a single timer stops alone.

The server runs each call's timers as tasks in a nursery of the call's own (src/callbox/server/
app.py). These tests walk trio's task tree from the root, so they see what really runs, not what
the server's dicts say; every task of a call carries the call's id in its name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from tests.helpers import accepted_call, initiate, running_task_names

from .wsclient import Client, connect

CALL = "call-0001"
CallIsRunning = Callable[[str], Awaitable[None]]
"""Asserts, from inside a scenario, that the call's tasks exist before the call ends."""
Scenario = Callable[[Client, Client, CallIsRunning], Awaitable[str]]
"""Makes a call between alice and bob, ends it one way, and returns the id of the ended call."""


async def tasks_of(call_id: str) -> list[str]:
    """The running tasks of the call, once every task that can run has run."""
    await trio.testing.wait_all_tasks_blocked()
    return [name for name in running_task_names() if call_id in name]


async def ringing(alice: Client, bob: Client) -> None:
    await alice.send(initiate(CALL, "bob"))
    await alice.expect("call_ringing")
    await bob.expect("call_incoming", call_id=CALL)


async def hangup(alice: Client, bob: Client, running: CallIsRunning) -> str:
    await accepted_call(alice, bob, CALL)
    await running(CALL)
    await alice.send({"type": "hangup", "call_id": CALL})
    await bob.expect("call_ended", reason="hangup")
    return CALL


def rejection(reason: str, ended: str) -> Scenario:
    """bob rejects the ringing call with `reason`; the call ends as `ended`."""

    async def scenario(alice: Client, bob: Client, running: CallIsRunning) -> str:
        await ringing(alice, bob)
        await running(CALL)
        await bob.send({"type": "call_reject", "call_id": CALL, "reason": reason})
        await bob.expect("call_ended", reason=ended)
        return CALL

    scenario.__name__ = ended
    return scenario


rejected = rejection("declined", "rejected")
busy = rejection("busy", "busy")


async def ring_timeout(alice: Client, bob: Client, running: CallIsRunning) -> str:
    await ringing(alice, bob)
    await running(CALL)
    await bob.expect("call_ended", reason="ring_timeout")
    return CALL


async def max_duration(alice: Client, bob: Client, running: CallIsRunning) -> str:
    await accepted_call(alice, bob, CALL)
    await running(CALL)
    await alice.expect("call_expiring")
    await alice.expect("call_ended", reason="max_duration")
    return CALL


async def disconnected(alice: Client, bob: Client, running: CallIsRunning) -> str:
    await accepted_call(alice, bob, CALL)
    await running(CALL)
    await bob.send({"type": "bye"})
    await alice.expect("call_ended", reason="disconnected")
    return CALL


async def offline(alice: Client, bob: Client, running: CallIsRunning) -> str:
    """Ends in the event that opened it: there is no moment to see it running."""
    await alice.send(initiate(CALL, "nobody"))
    await alice.expect("call_rejected", reason="offline")
    await alice.expect("call_ended", reason="offline")
    return CALL


async def merged(alice: Client, bob: Client, running: CallIsRunning) -> str:
    """Glare: the ringing call has the greater id, so it ends merged into bob's new one."""
    ringing_call, crossing_call = "call-bbbb", "call-aaaa"
    await alice.send(initiate(ringing_call, "bob"))
    await alice.expect("call_ringing")
    await bob.expect("call_incoming", call_id=ringing_call)
    await running(ringing_call)
    await bob.send(initiate(crossing_call, "alice"))
    await alice.expect("call_ended", call_id=ringing_call, reason="merged")
    assert await tasks_of(crossing_call), "the merged call runs on"
    return ringing_call


@pytest.mark.parametrize(
    "scenario",
    [hangup, rejected, busy, ring_timeout, max_duration, disconnected, offline, merged],
    ids=lambda scenario: scenario.__name__,
)
async def test_no_task_of_an_ended_call_is_left(
    url: str, autojump_clock: trio.testing.MockClock, scenario: Scenario
) -> None:
    """Every `call_ended` reason that ends a whole call; `answered_elsewhere` and `call_full`
    end one device's or one invitee's part only (see below), `error` no client can cause."""

    async def running(call_id: str) -> None:
        assert f"call {call_id}" in await tasks_of(call_id)

    async with connect(url, "alice") as alice, connect(url, "bob") as bob:
        ended = await scenario(alice, bob, running)
        assert await tasks_of(ended) == []


async def test_an_answer_stops_that_invitees_ring_timer_alone(
    url: str, autojump_clock: trio.testing.MockClock
) -> None:
    """The one reason each timer keeps a cancel scope of its own: the call goes on."""
    async with (
        connect(url, "alice") as alice,
        connect(url, "bob") as bob,
        connect(url, "carol") as carol,
    ):
        await alice.send(initiate(CALL, "bob", "carol"))
        await alice.expect("call_ringing")
        await bob.expect("call_incoming", call_id=CALL)
        await carol.expect("call_incoming", call_id=CALL)
        ring_timers = [name for name in await tasks_of(CALL) if "RingTimer" in name]
        assert len(ring_timers) == 2 and any("'bob'" in name for name in ring_timers)
        await bob.send({"type": "call_answer", "call_id": CALL})
        await bob.expect("call_accepted", by="bob")
        ring_timers = [name for name in await tasks_of(CALL) if "RingTimer" in name]
        assert len(ring_timers) == 1 and "'carol'" in ring_timers[0]
