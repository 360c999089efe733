"""Nodes of a cluster on a real `redis-server`: two in one process (a call across them), and two
`callbox serve --redis` processes, one of them killed with SIGKILL in the middle of a call."""

from __future__ import annotations

import os
import signal

import pytest
import trio

from callbox.client import connect
from callbox.config import Config
from callbox.messages import (
    CallAccepted,
    CallEnded,
    CallIncoming,
    CallRinging,
    Error,
    RelayedSdpOffer,
)
from callbox.server.cluster import serve_on_redis
from tests.cluster.redis_server import RedisServer
from tests.helpers import serve_process, server_url

pytestmark = pytest.mark.redis


async def test_a_call_between_two_nodes_on_redis(nursery: trio.Nursery, redis: RedisServer) -> None:
    config = Config(port=0)
    first = server_url(await nursery.start(serve_on_redis, config, redis.url))
    second = server_url(await nursery.start(serve_on_redis, config, redis.url))
    async with connect(first, user_id="alice") as alice, connect(second, user_id="bob") as bob:
        assert alice.welcome.node != bob.welcome.node
        call_id = await alice.initiate(["bob"])
        await alice.expect(CallRinging)
        await bob.expect(CallIncoming, call_id=call_id)
        await bob.answer(call_id)
        await alice.expect(CallAccepted, by="bob")
        for n in range(20):  # woken over Redis pub/sub, read from the outbox, in order
            await bob.offer(call_id, "alice", f"v={n}")
        for n in range(20):
            assert (await alice.expect(RelayedSdpOffer)).sdp == f"v={n}"
        await alice.hangup(call_id)
        await bob.expect(CallAccepted)
        await bob.expect(CallEnded, reason="hangup")


@pytest.mark.slow
async def test_a_node_killed_mid_call_loses_no_call_and_no_message(redis: RedisServer) -> None:
    """bob's node dies (SIGKILL) while alice keeps sending him offers: bob's client resumes on
    alice's node, gets every offer once and in order, and the call goes on to its hang-up."""
    env = {"CALLBOX_REDIS_URL": redis.url}
    async with (
        serve_process(**env) as kept,
        serve_process(**env) as doomed,
        connect([kept.url], user_id="alice") as alice,
        connect([doomed.url, kept.url], user_id="bob", reconnect=True) as bob,
    ):
        call_id = await alice.initiate(["bob"])
        await bob.expect(CallIncoming, call_id=call_id)
        await bob.answer(call_id)
        await alice.expect(CallRinging)
        await alice.expect(CallAccepted)
        await bob.expect(CallAccepted)
        for n in range(10):
            await alice.offer(call_id, "bob", f"v={n}")
        for n in range(5):
            assert (await bob.expect(RelayedSdpOffer)).sdp == f"v={n}"
        os.kill(doomed.pid, signal.SIGKILL)
        await doomed.process.wait()
        for n in range(10, 20):
            await alice.offer(call_id, "bob", f"v={n}")
        with trio.fail_after(10):
            for n in range(5, 20):
                offer = await bob.expect(RelayedSdpOffer)
                assert offer.sdp == f"v={n}", offer
        assert bob.url == kept.url and bob.welcome.resumed
        await bob.offer(call_id, "alice", "v=answer")
        assert (await alice.expect(RelayedSdpOffer)).sdp == "v=answer"
        await bob.hangup(call_id)
        await alice.expect(CallEnded, reason="hangup")


@pytest.mark.slow
async def test_a_frozen_redis_refuses_what_it_would_apply_too_late(
    nursery: trio.Nursery, redis: RedisServer
) -> None:
    """Redis stops answering (SIGSTOP) for longer than a node waits: the sender is told
    `unavailable` within 2.5 s, and when Redis wakes up the message it was holding does not
    apply after all; sent again, it is delivered once."""
    config = Config(port=0)
    url = server_url(await nursery.start(serve_on_redis, config, redis.url))
    async with connect(url, user_id="alice") as alice, connect(url, user_id="bob") as bob:
        call_id = await alice.initiate(["bob"])
        await bob.expect(CallIncoming, call_id=call_id)
        await bob.answer(call_id)
        await bob.expect(CallAccepted)
        os.kill(redis.process.pid, signal.SIGSTOP)
        try:
            with trio.fail_after(2.5 + 1):  # 2.5 s, and some slack for a busy machine
                await bob.offer(call_id, "alice", "v=lost", rid="r1")
                await bob.expect(Error, code="unavailable", rid="r1")
            await trio.sleep(1)
        finally:
            os.kill(redis.process.pid, signal.SIGCONT)
        await bob.offer(call_id, "alice", "v=again")
        await alice.expect(CallRinging)
        await alice.expect(CallAccepted)
        assert (await alice.expect(RelayedSdpOffer)).sdp == "v=again"
        await alice.hangup(call_id)
        await alice.expect(CallEnded, reason="hangup")
