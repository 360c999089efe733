"""The admin API of a cluster on a real `redis-server`: two nodes, and every admin request sent
to the node that does not hold the sockets it acts on."""

from __future__ import annotations

import orjson
import pytest
import trio

from callbox.config import Config
from callbox.server.cluster import serve_on_redis
from tests.cluster.redis_server import RedisServer
from tests.helpers import ADMIN_TOKEN as TOKEN
from tests.helpers import accepted_call, server_url
from tests.helpers import admin_request as admin
from tests.server.test_admin_api import closed_with
from tests.server.wsclient import connect

pytestmark = pytest.mark.redis


async def test_removing_a_user_through_the_other_node(
    nursery: trio.Nursery, redis: RedisServer
) -> None:
    config = Config(port=0, admin_token=TOKEN)
    first = server_url(await nursery.start(serve_on_redis, config, redis.url))
    second = server_url(await nursery.start(serve_on_redis, config, redis.url))
    async with connect(first, "alice") as alice, connect(second, "bob") as bob:
        await accepted_call(alice, bob)
        # Read from the shared store, on the node that holds neither socket of the call's
        # other half: each node sees the whole cluster.
        listed = orjson.loads((await admin(first, "GET", "/api/v1/calls")).body)
        assert [call["call_id"] for call in listed["calls"]] == ["call-0001"]
        user = orjson.loads((await admin(first, "GET", "/api/v1/users/bob")).body)
        assert [session["connected"] for session in user["sessions"]] == [True]
        stats = orjson.loads((await admin(first, "GET", "/api/v1/stats")).body)
        assert (stats["sessions"], stats["calls"]) == (2, 1)
        # bob's socket is on the second node; the first commits, and forwards the close.
        removed = await admin(first, "DELETE", "/api/v1/users/bob/sessions")
        assert removed.status == 204
        await alice.expect("call_ended", call_id="call-0001", reason="terminated", by="bob")
        assert await closed_with(bob.ws) == 4004
        assert (await admin(second, "GET", "/api/v1/users/bob")).status == 404
        token = bob.welcome["resume_token"]
        async with connect(second) as again:
            await again.send({"type": "hello", "user_id": "bob", "resume": token, "last_seq": 2})
            await again.expect("welcome", resumed=False)


async def test_terminating_a_call_through_the_other_node(
    nursery: trio.Nursery, redis: RedisServer
) -> None:
    config = Config(port=0, admin_token=TOKEN)
    first = server_url(await nursery.start(serve_on_redis, config, redis.url))
    second = server_url(await nursery.start(serve_on_redis, config, redis.url))
    async with connect(second, "alice") as alice, connect(second, "bob") as bob:
        await accepted_call(alice, bob)
        assert (await admin(first, "DELETE", "/api/v1/calls/call-0001")).status == 204
        await alice.expect("call_ended", reason="terminated")
        await bob.expect("call_ended", reason="terminated")
        assert (await admin(first, "GET", "/api/v1/calls/call-0001")).status == 404
