"""The admin API of a cluster node whose store refuses commits: 503 with `Retry-After`,
nothing done, and the same request applied once the store is back."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import trio

from callbox.cluster.backend import ClusterUnavailable, MemoryBackend, Outcome, Transaction
from callbox.config import Config
from callbox.server.cluster import MemoryBus, serve_node
from tests.helpers import ADMIN_TOKEN as TOKEN
from tests.helpers import accepted_call, server_url
from tests.helpers import admin_request as admin
from tests.server.wsclient import connect


class CommitsRefused(MemoryBackend):
    """Reads answer; commits fail while `down`, as a Redis that refuses writes would."""

    down = False

    async def commit(
        self, batch_id: str, batch: Sequence[Transaction], not_after_ms: int = 0
    ) -> list[Outcome]:
        if self.down:
            raise ClusterUnavailable("the store refuses commits (a test)")
        return await super().commit(batch_id, batch, not_after_ms)


async def test_a_delete_the_store_cannot_commit_is_503_then_applies(nursery: trio.Nursery) -> None:
    backend = CommitsRefused()
    config = Config(port=0, admin_token=TOKEN)
    url = server_url(await nursery.start(serve_node, config, backend, MemoryBus()))
    async with connect(url, "alice") as alice, connect(url, "bob") as bob:
        await accepted_call(alice, bob)
        backend.down = True
        refused = await admin(url, "DELETE", "/api/v1/calls/call-0001")
        assert refused.status == 503 and refused.fields["retry-after"] == "1"
        assert orjson.loads(refused.body)["error"] == "unavailable"
        assert (await admin(url, "GET", "/api/v1/calls/call-0001")).status == 200  # not done
        backend.down = False
        assert (await admin(url, "DELETE", "/api/v1/calls/call-0001")).status == 204
        await alice.expect("call_ended", reason="terminated")
        await bob.expect("call_ended", reason="terminated")
