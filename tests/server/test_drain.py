"""A single process drains (`serve`'s `drain`, what SIGTERM sets): every client gets 1012
"service restart", and `serve` returns once they are gone (tests/cluster/test_drain.py: a node)."""

from __future__ import annotations

import pytest
import trio

from callbox.client import connect
from callbox.config import Config
from callbox.server.app import serve
from tests.helpers import server_url


@pytest.mark.parametrize("connections", [0, 3])
async def test_a_single_process_drains_with_or_without_clients(
    nursery: trio.Nursery, connections: int
) -> None:
    drain, returned = trio.Event(), trio.Event()

    async def drained(*, task_status: trio.TaskStatus[list[trio.SocketListener]]) -> None:
        await serve(Config(port=0), drain=drain, task_status=task_status)
        returned.set()

    url = server_url(await nursery.start(drained))
    async with trio.open_nursery() as clients:
        closes: list[tuple[int | None, str]] = []

        async def client(n: int, *, task_status: trio.TaskStatus[None]) -> None:
            async with connect(url, user_id=f"u{n}") as user:
                task_status.started()
                await returned.wait()
                closed = user.connection.ws.closed
                closes.append((None, "") if closed is None else (closed.code, closed.reason))

        for n in range(connections):
            await clients.start(client, n)
        drain.set()
        with trio.fail_after(10):
            await returned.wait()
    assert closes == [(1012, "service restart")] * connections
