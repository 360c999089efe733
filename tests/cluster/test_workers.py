"""`callbox serve --workers 2 --redis URL`, a real process with its workers, on a real Redis: the
connections spread over both workers, a call across them, a worker killed (SIGKILL) and started
again by the parent while its client resumes, the pool's metrics from one port, and SIGTERM to
the parent: 1012 to every client, exit status 0."""

from __future__ import annotations

import os
import re
import signal
import sys
from contextlib import AsyncExitStack

import pytest
import trio

from callbox.client import Client, connect
from callbox.messages import CallAccepted, CallIncoming, CallRinging, RelayedSdpOffer
from callbox.server.workers import (
    FIRST_RESTART_DELAY_S,
    MAX_RESTART_DELAY_S,
    SILENT_FOR_S,
    restart_delay,
)
from tests.cluster.redis_server import RedisServer
from tests.helpers import ServeProcess, closed_port_url, serve_process
from tests.server.test_http import scrape

MAX_CLIENTS = 40
"""Clients connected at most until both workers have one (each lands on either at random)."""
SERVING = re.compile(r"worker \d+ \(pid (\d+)\) serving as node (\S+)")


def worker_pids(pool: ServeProcess) -> dict[str, int]:
    """The process id of each node, as the parent logs them (the latest start of each)."""
    return {node: int(pid) for pid, node in SERVING.findall(pool.log)}


async def restarted(pool: ServeProcess, pid: int) -> int:
    """Once the parent has started another worker in place of `pid` and it serves: its pid."""
    while (found := re.search(rf"restarted: pid {pid} -> pid (\d+)", pool.log)) is None:
        await trio.sleep(0.1)
    new = int(found.group(1))
    while new not in worker_pids(pool).values():
        await trio.sleep(0.1)
    return new


async def clients_on_both_workers(stack: AsyncExitStack, url: str) -> list[Client]:
    """Clients connected to `url` until two have been welcomed by different nodes: all of them,
    one of each node first."""
    clients: list[Client] = []
    for n in range(MAX_CLIENTS):
        client = await stack.enter_async_context(connect(url, user_id=f"u{n}", reconnect=True))
        clients.append(client)
        if client.welcome.node != clients[0].welcome.node:
            return [clients[0], client, *clients[1:-1]]
    raise AssertionError(f"{MAX_CLIENTS} connections all landed on {clients[0].welcome.node}")


UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
"""A WebSocket upgrade by hand, for a client that then reads nothing (it never answers a close)."""


async def accepts(host: str, port: int) -> bool:
    """Whether a TCP connection to the port is accepted (a listening socket is still open)."""
    try:
        stream = await trio.open_tcp_stream(host, port)
    except OSError:
        return False
    await stream.aclose()
    return True


async def pool_connections(url: str) -> dict[str, float]:
    """`callbox_connections` of each node, from one scrape of the shared port."""
    family = (await scrape(url))["callbox_connections"]
    return {sample.labels["node"]: sample.value for sample in family.samples}


@pytest.mark.redis
@pytest.mark.slow
async def test_a_worker_pool_shares_its_port_survives_a_killed_worker_and_drains(
    redis: RedisServer,
) -> None:
    async with (
        serve_process("--workers", "2", CALLBOX_REDIS_URL=redis.url) as pool,
        AsyncExitStack() as stack,
    ):
        assert len(re.findall(r"callbox listening on ws://", pool.log)) == 1
        assert pool.url.endswith("/ws") and not pool.url.endswith(":0/ws")
        clients = await clients_on_both_workers(stack, pool.url)
        alice, bob = clients[:2]
        call_id = await alice.initiate([bob.user_id])
        await bob.expect(CallIncoming, call_id=call_id)
        await bob.answer(call_id)
        await alice.expect(CallRinging)
        await alice.expect(CallAccepted)
        await bob.expect(CallAccepted)
        for n in range(5):
            await alice.offer(call_id, bob.user_id, f"v={n}")
        for n in range(5):
            assert (await bob.expect(RelayedSdpOffer)).sdp == f"v={n}"

        # Any scrape of the shared port counts both workers' connections, each under its node.
        nodes = {alice.welcome.node, bob.welcome.node}
        with trio.fail_after(10):
            while (counts := await pool_connections(pool.url)).keys() != nodes or sum(
                counts.values()
            ) != len(clients):
                await trio.sleep(0.2)

        # bob's worker dies; the parent starts another; bob resumes and misses nothing.
        bobs_node = bob.welcome.node
        assert bobs_node is not None
        doomed = worker_pids(pool)[bobs_node]
        os.kill(doomed, signal.SIGKILL)
        for n in range(5, 15):
            await alice.offer(call_id, bob.user_id, f"v={n}")
        with trio.fail_after(15):
            for n in range(5, 15):
                assert (await bob.expect(RelayedSdpOffer)).sdp == f"v={n}"
            await restarted(pool, doomed)
        assert bob.welcome.resumed and bob.welcome.node != bobs_node
        await bob.offer(call_id, alice.user_id, "v=back")
        assert (await alice.expect(RelayedSdpOffer)).sdp == "v=back"

        # SIGTERM to the parent: the port refuses new clients at once, while the workers still
        # drain (one waits for a client that never answers its close); every client gets 1012;
        # exit status 0.
        host, port = pool.url.removeprefix("ws://").removesuffix("/ws").rsplit(":", 1)
        mute = await stack.enter_async_context(await trio.open_tcp_stream(host, int(port)))
        await mute.send_all(UPGRADE)
        assert b" 101 " in await mute.receive_some()
        os.kill(pool.pid, signal.SIGTERM)
        with trio.fail_after(4):  # within the mute client's closing timeout (5 s)
            while await accepts(host, int(port)):
                await trio.sleep(0.05)
        assert pool.process.returncode is None  # refused while the pool still drains
        with trio.fail_after(20):
            assert await pool.process.wait() == 0, pool.log
        assert {client.connection.close_code for client in clients} == {1012}
    assert "every worker drained; exiting" in pool.log, pool.log
    assert pool.log.count("drained in") == 2, pool.log


def test_a_crashed_worker_starts_again_within_the_bound_sooner_after_a_long_life() -> None:
    delays = [restart_delay(crashes) for crashes in range(12)]
    assert delays[0] == delays[1] == FIRST_RESTART_DELAY_S  # after a long life, as the first
    assert delays == sorted(delays)  # backing off at each quick crash in a row
    assert max(delays) == MAX_RESTART_DELAY_S <= 10


@pytest.mark.slow
async def test_a_pool_whose_workers_cannot_start_fails_with_their_status() -> None:
    """Nothing listens where the Redis URL points: the workers exit at start-up (1: out of
    reach, as a single process does), and so does the parent, without saying where it
    listens."""
    unreachable = closed_port_url().replace("ws://", "redis://").replace("/ws", "/0")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CALLBOX_", "JWT_"))}
    command = [sys.executable, "-m", "callbox", "serve", "--port", "0", "--workers", "2"]
    with trio.fail_after(30):
        done = await trio.run_process(
            [*command, "--redis", unreachable], env=clean, capture_stderr=True, check=False
        )
    log = done.stderr.decode()
    assert done.returncode == 1, log
    assert "could not start (exit status 1)" in log, log
    assert "callbox listening" not in log, log
    assert "Traceback" not in log, log


@pytest.mark.redis
@pytest.mark.slow
async def test_a_hung_worker_is_killed_and_started_again(redis: RedisServer) -> None:
    """A worker stopped (SIGSTOP) says nothing to its parent: after `SILENT_FOR_S` the parent
    kills it and starts another, which serves; the other worker's client never noticed."""
    async with (
        serve_process("--workers", "2", CALLBOX_REDIS_URL=redis.url) as pool,
        AsyncExitStack() as stack,
    ):
        alice, bob = (await clients_on_both_workers(stack, pool.url))[:2]
        assert alice.welcome.node is not None
        frozen = worker_pids(pool)[alice.welcome.node]
        os.kill(frozen, signal.SIGSTOP)
        with trio.fail_after(SILENT_FOR_S + 15):
            await restarted(pool, frozen)
        assert f"(pid {frozen}, node {alice.welcome.node}) silent for" in pool.log
        await bob.ping()
        assert not bob.welcome.resumed
