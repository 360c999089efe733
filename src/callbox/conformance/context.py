"""What a case works with: unique names, clients that are cleaned up, limits and a time budget."""

from __future__ import annotations

import trio

from callbox.client import Client, Connection, Traffic
from callbox.conformance.options import Options
from callbox.conformance.registry import Skip
from callbox.messages import Limits

MAX_CONNECTIONS_PER_CASE = 32
"""A case that would need more (a limit set high) is skipped rather than flood the server."""


class Context:
    """One case's view of the server: every name it makes is unique to the run and the case.

    Clients opened here are closed when the case ends, after a check that none of them has a
    message left unread: a case must account for everything the server sent it.
    """

    def __init__(
        self,
        *,
        url: str,
        limits: Limits,
        options: Options,
        prefix: str,
        traffic: Traffic,
        nursery: trio.Nursery,
        budget: trio.CancelScope,
    ) -> None:
        self.url = url
        self.limits = limits
        self.options = options
        self.traffic = traffic
        self._prefix = prefix
        self._nursery = nursery
        self._budget = budget
        self._clients: list[Client] = []
        self._connections: list[Connection] = []

    def name(self, label: str) -> str:
        """A user, room or call id for `label`, unique to this case; names sort like labels."""
        return f"{self._prefix}-{label}"

    async def client(self, label: str, *, device: str | None = None) -> Client:
        """A session of user `label` (several calls with the same label: several devices)."""
        client = await Client.open(
            self._nursery,
            self.url,
            user_id=self.name(label),
            device_id=device,
            traffic=self.traffic,
        )
        self._clients.append(client)
        return client

    async def clients(self, *labels: str) -> list[Client]:
        return [await self.client(label) for label in labels]

    async def connection(self) -> Connection:
        """A connection that has not said `hello`."""
        connection = await Connection.open(self._nursery, self.url, traffic=self.traffic)
        self._connections.append(connection)
        return connection

    def wait(self, what: str, ms: int) -> float:
        """Allows the case to wait `ms` for a server timer, in seconds; `Skip` if that is more
        than `--max-wait`."""
        seconds = ms / 1000
        if seconds > self.options.max_wait:
            raise Skip(f"{what} is {ms} ms, more than --max-wait {self.options.max_wait:g} s")
        self._budget.deadline += seconds
        return seconds

    def need_connections(self, count: int, why: str) -> None:
        if count > MAX_CONNECTIONS_PER_CASE:
            raise Skip(f"{why} needs {count} connections, more than {MAX_CONNECTIONS_PER_CASE}")

    async def settle(self) -> None:
        """Proves that no client has a message left unread: each pings, and the pong must be
        the next message."""
        for client in self._clients:
            if client.connection.close_code is None:
                await client.ping()

    def awaiting(self) -> str:
        """Who was waiting for what, for a case that timed out."""
        connections = [c.connection for c in self._clients] + self._connections
        waits = [f"{c.name} was waiting for {c.awaiting}" for c in connections if c.awaiting]
        return "; ".join(waits) or "no client was waiting for a message"

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()
        for connection in self._connections:
            await connection.aclose()
