"""What the conformance suite found when it first ran against three nodes (issue 12), each
reduced to the nodes of one process on the in-memory backend and bus, over real WebSockets."""

from __future__ import annotations

import trio

from callbox.client import connect
from callbox.cluster.backend import MemoryBackend
from callbox.config import Config
from callbox.messages import (
    CallAccepted,
    CallEnded,
    CallExpiring,
    CallIncoming,
    CallRinging,
    Presence,
)
from callbox.server.cluster import MemoryBus, serve_node
from tests.helpers import running_task_names, server_url


async def start_nodes(nursery: trio.Nursery, count: int, **settings: object) -> list[str]:
    backend, bus = MemoryBackend(), MemoryBus()
    config = Config(port=0).with_overrides(**settings)
    return [server_url(await nursery.start(serve_node, config, backend, bus)) for _ in range(count)]


async def test_a_call_answered_on_another_node_is_warned_before_its_cap(
    nursery: trio.Nursery,
) -> None:
    """The answer's node arms the warning and the cap. It held no nursery for the call (only
    the node of `call_initiate` did), so it dropped them, and they fired only once overdue on
    any node, a second late: the warning came with the cap, `ends_in_ms` 0
    (conformance: call.active.expiry_warning, call.active.max_duration)."""
    first, second = await start_nodes(
        nursery, 2, ring_timeout_ms=1000, max_call_duration_ms=3000, call_expiring_warning_ms=1000
    )
    async with connect(first, user_id="alice") as alice, connect(second, user_id="bob") as bob:
        call_id = await alice.initiate(["bob"])
        await bob.expect(CallIncoming, call_id=call_id)
        await bob.answer(call_id)
        await bob.expect(CallAccepted, call_id=call_id)
        warning = await bob.expect(CallExpiring, call_id=call_id)
        assert warning.ends_in_ms > 0
        await bob.expect(CallEnded, call_id=call_id, reason="max_duration")


async def test_watching_a_hundred_users_at_once_on_a_node(nursery: trio.Nursery) -> None:
    """`presence_subscribe` may name 100 users; a node loads three records for each it has not
    seen (the user, its last-seen time, its watchers), one at a time, and gave an event up after
    64 loads: `unavailable` for every such subscription (conformance:
    errors.limit_reached.presence)."""
    (url,) = await start_nodes(nursery, 1)
    watched = [f"u{n}" for n in range(100)]
    async with connect(url, user_id="alice") as alice:
        await alice.presence_subscribe(watched)
        for user_id in watched:
            await alice.expect(Presence, user_id=user_id, status="offline")


async def test_no_node_keeps_a_call_nursery_once_its_timers_there_are_done(
    nursery: trio.Nursery,
) -> None:
    """A node keeps a call's nursery for the call's timers it runs. The call may end on
    another node, whose `CloseCall` this one never sees: alice's node kept the nursery of every
    call it started and another ended, and its ring timer, for good."""
    first, second = await start_nodes(nursery, 2, ring_timeout_ms=1000)
    async with connect(first, user_id="alice") as alice, connect(second, user_id="bob") as bob:
        call_id = await alice.initiate(["bob"])  # the ring timer runs on alice's node
        await alice.expect(CallRinging, call_id=call_id)
        await bob.expect(CallIncoming, call_id=call_id)
        await bob.answer(call_id)  # cancelled on bob's, which arms the cap there
        await bob.expect(CallAccepted, call_id=call_id)
        await alice.expect(CallAccepted, call_id=call_id)
        await bob.hangup(call_id)  # bob's node ends the call
        await alice.expect(CallEnded, call_id=call_id, reason="hangup")
        with trio.fail_after(5):  # once alice's node's ring timer has come up, for nothing
            while any(call_id in name for name in running_task_names()):
                await trio.sleep(0.1)
