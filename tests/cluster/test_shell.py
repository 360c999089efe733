"""Nodes of a cluster in one process, on the in-memory backend and bus, over real WebSockets:
a call between two nodes, and a session resumed on the node it did not start on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed

from callbox.client import SessionLost, connect
from callbox.cluster.backend import (
    ClusterUnavailable,
    MemoryBackend,
    Outcome,
    Transaction,
    Versioned,
)
from callbox.config import Config
from callbox.messages import (
    CallAccepted,
    CallEnded,
    CallIncoming,
    CallRinging,
    Error,
    RelayedSdpOffer,
    RoomJoined,
)
from callbox.server.cluster import (
    CATCH_UP_S,
    CLOSE_UNAVAILABLE,
    LEASE_S,
    MemoryBus,
    serve_node,
)
from tests.helpers import server_url
from tests.server.webhook_receiver import body_types, start_receiver


async def start_nodes(nursery: trio.Nursery, count: int, **settings: Any) -> list[str]:
    backend, bus = MemoryBackend(), MemoryBus()
    config = Config(port=0, **settings)
    return [server_url(await nursery.start(serve_node, config, backend, bus)) for _ in range(count)]


async def test_a_call_between_two_nodes(nursery: trio.Nursery) -> None:
    first, second = await start_nodes(nursery, 2)
    async with connect(first, user_id="alice") as alice, connect(second, user_id="bob") as bob:
        assert alice.welcome.node != bob.welcome.node
        call_id = await alice.initiate(["bob"])
        await alice.expect(CallRinging, call_id=call_id)
        await bob.expect(CallIncoming, call_id=call_id, from_="alice")
        await bob.answer(call_id)
        await alice.expect(CallAccepted, by="bob")
        await bob.expect(CallAccepted, by="bob")
        await bob.offer(call_id, "alice", "v=0")
        offer = await alice.expect(RelayedSdpOffer, sdp="v=0")
        assert offer.seq == 3
        await alice.hangup(call_id)
        await bob.expect(CallEnded, reason="hangup")


async def test_a_session_resumes_on_another_node(nursery: trio.Nursery) -> None:
    first, second = await start_nodes(nursery, 2)
    async with connect(first, user_id="alice") as alice, connect(first, user_id="bob") as bob:
        call_id = await alice.initiate(["bob"])
        await alice.expect(CallRinging)
        await bob.expect(CallIncoming, call_id=call_id)
        await bob.answer(call_id)
        await bob.expect(CallAccepted)
        await alice.expect(CallAccepted)
        await bob.drop()
        for n in range(3):
            await alice.offer(call_id, "bob", f"v={n}")
        bob.urls = (second,)
        welcome = await bob.resume()
        assert welcome.resumed and welcome.node != alice.welcome.node
        for n in range(3):
            offer = await bob.expect(RelayedSdpOffer, sdp=f"v={n}")
            assert offer.seq == 3 + n
        await alice.hangup(call_id)
        await bob.expect(CallEnded, reason="hangup")


class FailingBackend(MemoryBackend):
    """A `MemoryBackend` that can be made out of reach, as Redis stopped would be."""

    down = False

    async def load(self, keys: Sequence[str]) -> dict[str, Versioned]:
        self._reach()
        return await super().load(keys)

    async def commit(
        self, batch_id: str, batch: Sequence[Transaction], not_after_ms: int = 0
    ) -> list[Outcome]:
        self._reach()
        return await super().commit(batch_id, batch, not_after_ms)

    def _reach(self) -> None:
        if self.down:
            raise ClusterUnavailable("the store is down (a test)")


async def test_a_store_out_of_reach_answers_unavailable_and_recovers(
    nursery: trio.Nursery,
) -> None:
    backend = FailingBackend()
    url = server_url(await nursery.start(serve_node, Config(port=0), backend, MemoryBus()))
    async with connect(url, user_id="alice") as alice, connect(url, user_id="bob") as bob:
        backend.down = True
        call_id = await alice.initiate(["bob"], rid="r1")
        refusal = await alice.expect(Error, code="unavailable", rid="r1")
        assert "not applied" in refusal.message
        with pytest.raises(ConnectionClosed) as refused:  # a new session: closed with 1013
            async with connect(url, user_id="carol"):
                pass
        assert refused.value.reason.code == CLOSE_UNAVAILABLE
        backend.down = False
        await alice.initiate(["bob"], call_id=call_id)  # sent again: applied once
        await alice.expect(CallRinging, call_id=call_id)
        await bob.expect(CallIncoming, call_id=call_id)


async def node_in_scope(
    nursery: trio.Nursery, backend: MemoryBackend, bus: MemoryBus, **settings: Any
) -> tuple[str, trio.CancelScope]:
    """A node whose `cancel()` stops it at once, as a node that dies (nothing more is
    committed for its connections; its clients see their sockets close)."""
    scope = trio.CancelScope()
    config = Config(port=0).with_overrides(**settings)

    async def run(*, task_status: trio.TaskStatus[list[trio.SocketListener]]) -> None:
        with scope:
            await serve_node(config, backend, bus, task_status=task_status)

    return server_url(await nursery.start(run)), scope


async def test_the_timers_of_a_dead_node_fire_on_another(nursery: trio.Nursery) -> None:
    backend, bus = MemoryBackend(), MemoryBus()
    doomed, node = await node_in_scope(nursery, backend, bus, ring_timeout_ms=1000)
    kept, _ = await node_in_scope(nursery, backend, bus, ring_timeout_ms=1000)
    async with connect(kept, user_id="bob") as bob:
        async with connect(doomed, user_id="alice") as alice:
            call_id = await alice.initiate(["bob"])  # its ring timeout is armed on alice's node
            await bob.expect(CallIncoming, call_id=call_id)
            node.cancel()
        with trio.fail_after(10):
            ended = await bob.expect(CallEnded, call_id=call_id)
        assert ended.reason == "ring_timeout"
        assert backend.timers == {}


@pytest.mark.slow
async def test_the_sessions_of_a_dead_node_end_for_their_peers_after_the_grace(
    nursery: trio.Nursery,
) -> None:
    """bob's node dies and bob never comes back: once the node's lease has run out another
    node takes its sessions over, bob's grace starts, and when it ends alice is told."""
    backend, bus = MemoryBackend(), MemoryBus()
    doomed, node = await node_in_scope(nursery, backend, bus, reconnect_grace_ms=500)
    kept, _ = await node_in_scope(nursery, backend, bus, reconnect_grace_ms=500)
    async with connect(kept, user_id="alice") as alice:
        async with connect(doomed, user_id="bob") as bob:
            call_id = await alice.initiate(["bob"])
            await bob.expect(CallIncoming, call_id=call_id)
            await bob.answer(call_id)
            await alice.expect(CallRinging)
            await alice.expect(CallAccepted)
            node.cancel()
        with trio.fail_after(LEASE_S + 10):
            ended = await alice.expect(CallEnded, call_id=call_id)
        assert ended.reason == "disconnected"
    assert backend.leases.keys() == {2}  # the dead node's lease is gone, the live one's kept


async def test_a_store_restarted_empty_sends_every_client_to_a_new_session(
    nursery: trio.Nursery,
) -> None:
    backend = MemoryBackend()
    url = server_url(await nursery.start(serve_node, Config(port=0), backend, MemoryBus()))
    async with connect(url, user_id="alice", reconnect=True) as alice:
        await alice.room_join("lobby")
        await alice.expect(RoomJoined)
        MemoryBackend.__init__(backend)  # all it holds now: what a Redis restarted empty holds
        with trio.fail_after(10), pytest.raises(SessionLost) as lost:
            while True:
                await alice.receive()
        assert lost.value.welcome.resumed is False
        assert alice.welcome.session_id != ""


class DeafBus(MemoryBus):
    """A bus that loses every wake-up, as pub/sub does while a subscriber reconnects."""

    async def publish(self, node: int, message: bytes) -> None:
        pass


@pytest.mark.slow
async def test_frames_whose_wake_up_was_lost_arrive_by_the_catch_up(nursery: trio.Nursery) -> None:
    backend, bus = MemoryBackend(), DeafBus()
    first = server_url(await nursery.start(serve_node, Config(port=0), backend, bus))
    second = server_url(await nursery.start(serve_node, Config(port=0), backend, bus))
    async with connect(first, user_id="alice") as alice, connect(second, user_id="bob") as bob:
        call_id = await alice.initiate(["bob"])
        with trio.fail_after(CATCH_UP_S + 5):
            await bob.expect(CallIncoming, call_id=call_id)


async def test_each_webhook_event_is_sent_once_though_three_nodes_run(
    nursery: trio.Nursery,
) -> None:
    """An event runs on one node, and only that node carries out its actions (after the
    commit): so each webhook is POSTed once, by that node, whichever nodes the parties use."""
    secret = "whsec_" + "a" * 32  # 24 bytes once decoded
    receiver = await start_receiver(nursery, secret)
    first, second, third = await start_nodes(
        nursery, 3, webhook_urls=(receiver.url,), webhook_secret=secret
    )
    async with connect(first, user_id="alice") as alice, connect(second, user_id="bob") as bob:
        call_id = await alice.initiate(["bob"])
        await alice.expect(CallRinging, call_id=call_id)
        await bob.expect(CallIncoming, call_id=call_id)
        await bob.answer(call_id)
        await alice.expect(CallAccepted, by="bob")
        await bob.hangup(call_id)
        await alice.expect(CallEnded, reason="hangup")
    expected = [
        "call.initiated",
        "participant.joined",
        "call.answered",
        "participant.joined",
        "participant.left",
        "participant.left",
        "call.ended",
    ]
    await receiver.wait_delivered(len(expected))
    # A node sending a repeat would send it as it sent the first: the events of a later call
    # (on the third node: its start, its caller joining, its offline callee's ring) come after.
    async with connect(third, user_id="carol") as carol:
        await carol.initiate(["nobody"])
        await carol.expect(CallRinging, offline=["nobody"])
        bodies = await receiver.wait_delivered(len(expected) + 3)
    first_call = [body for body in bodies if body["data"]["call_id"] == call_id]
    assert sorted(body_types(first_call)) == sorted(expected)
    ids = [webhook_id for webhook_id, _ in receiver.delivered]
    assert len(ids) == len(set(ids))
