"""A node of a cluster drains (`run_server`'s `drain`, what SIGTERM sets): its clients get 1012,
and by the time it returns their sessions are detached in the store (their grace has started),
so they resume on another node at once, without waiting for the node's lease to run out."""

from __future__ import annotations

from collections.abc import Sequence

import trio

from callbox.client import connect
from callbox.cluster.backend import MemoryBackend, Outcome, Transaction
from callbox.config import Config
from callbox.messages import CallAccepted, CallIncoming, CallRinging, RelayedSdpOffer
from callbox.server.cluster import MemoryBus, serve_node
from tests.helpers import server_url


class SlowBackend(MemoryBackend):
    """Commits take a while, as a Redis round trip does (longer, so the test sees it): a drain
    that did not wait for its node's events would return before the closes' commits."""

    async def commit(
        self, batch_id: str, batch: Sequence[Transaction], not_after_ms: int = 0
    ) -> list[Outcome]:
        await trio.sleep(0.05)
        return await super().commit(batch_id, batch, not_after_ms)


async def test_a_drained_node_detaches_its_sessions_before_it_returns(
    nursery: trio.Nursery,
) -> None:
    backend, bus, config = SlowBackend(), MemoryBus(), Config(port=0)
    drain, returned = trio.Event(), trio.Event()

    async def drained_node(*, task_status: trio.TaskStatus[list[trio.SocketListener]]) -> None:
        await serve_node(config, backend, bus, drain=drain, task_status=task_status)
        returned.set()

    doomed = server_url(await nursery.start(drained_node))
    kept = server_url(await nursery.start(serve_node, config, backend, bus))
    async with (
        connect([kept], user_id="alice") as alice,
        connect([doomed, kept], user_id="bob") as bob,
    ):
        call_id = await alice.initiate(["bob"])
        await bob.expect(CallIncoming, call_id=call_id)
        await bob.answer(call_id)
        await alice.expect(CallRinging)
        await alice.expect(CallAccepted)
        await bob.expect(CallAccepted)
        await alice.offer(call_id, "bob", "v=0")
        session = bob.welcome.session_id
        assert (await backend.outboxes([session]))[session].conn is not None  # type: ignore[union-attr]

        drain.set()
        with trio.fail_after(10):
            await returned.wait()
        assert bob.connection.close_code == 1012
        assert (await backend.outboxes([session]))[session].conn is None  # type: ignore[union-attr]

        await alice.offer(call_id, "bob", "v=1")
        welcome = await bob.resume()
        assert welcome.resumed and bob.url == kept
        for n in range(2):
            assert (await bob.expect(RelayedSdpOffer)).sdp == f"v={n}"
