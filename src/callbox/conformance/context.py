"""What a case works with: unique names, clients that are cleaned up, limits and a time budget."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import trio

from callbox.client import Client, Connection, Traffic
from callbox.conformance.admin import admin_request
from callbox.conformance.generation import Generated
from callbox.conformance.options import Options
from callbox.conformance.registry import Skip
from callbox.conformance.spread import Spread
from callbox.messages import Limits, ServerMessage, Welcome

M = TypeVar("M", bound=ServerMessage)

MAX_CONNECTIONS_PER_CASE = 32
"""A case that would need more (a limit set high) is skipped rather than flood the server."""
CALL_MARGIN_MS = 500
"""How much shorter than `max_call_duration_ms` the time a case needs a call up must be: setting
the call up and checking what follows take some time too."""

ASYNCHRONOUS = frozenset({"call_expiring", "ice_servers", "presence"})
"""Server messages the protocol lets come at moments no request of the case decides, so a case
that is not about them skips them wherever they come instead of failing on them.

The schemas and the AsyncAPI document do not mark messages as unsolicited (every `send`
operation there is server-initiated), so the list is kept here, each for a reason:

- `call_expiring`: sent to every joined party once the call has `max_call_duration_ms` minus the
  server's warning (which `welcome` does not announce) left; with a short cap it comes in the
  middle of any case that holds a call.
- `ice_servers`: fresh TURN credentials, pushed before the previous ones expire, whatever the
  session is doing.
- `presence`: sent at every change of a watched user's status, and statuses change as a side
  effect of calls and connections (`in_call`, `offline` after the grace period), at moments a
  case about something else does not pin down.

A case that checks one of them names it in `watches` (see `registry.case`): its clients then get
it like any other message, so it can be expected, and a stray one fails the case.
"""


class CaseClient(Client):
    """A session that skips the `tolerated` types, except the one an `expect` asks for; each
    skipped message is counted in `skipped` (the report shows them), never a failure.

    The `seq` of a skipped message is checked like any other's (`Client.receive` does it).
    """

    tolerated: frozenset[str] = frozenset()
    """Set by `Context.client`: `ASYNCHRONOUS` less what the case watches."""
    skipped: Counter[str]
    spread: Spread
    """Set by `Context.client`: where the case's connections go, a resume's too."""

    async def receive(self) -> ServerMessage:
        """The next message that is not of a tolerated type."""
        while (message := await super().receive()).TYPE in self.tolerated:
            self.skipped[message.TYPE] += 1
        return message

    async def expect(self, kind: type[M], **fields: object) -> M:
        """Like `Client.expect`; a tolerated `kind` is not skipped while it is expected."""
        with self._tolerating(self.tolerated - {kind.TYPE}):
            return await super().expect(kind, **fields)

    async def resume(self, *, last_seq: int | None = None, token: str | None = None) -> Welcome:
        """Like `Client.resume`, on the case's next URL (`Spread`) rather than the next of
        the client's own: with several servers, a session resumes on any of them."""
        self.urls = (self.spread.next(),)
        return await super().resume(last_seq=last_seq, token=token)

    @contextmanager
    def tolerating(self, kind: str) -> Iterator[None]:
        """Skips `kind` within the block even if the case watches it: for the steps that lead
        up to what the case checks (`skipped` then tells whether one came too early)."""
        with self._tolerating(self.tolerated | {kind}):
            yield

    @contextmanager
    def _tolerating(self, tolerated: frozenset[str]) -> Iterator[None]:
        before, self.tolerated = self.tolerated, tolerated
        try:
            yield
        finally:
            self.tolerated = before


class Context:
    """One case's view of the server: every name it makes is unique to the run and the case.

    Clients opened here are closed when the case ends, after a check that none of them has a
    message left unread: a case must account for everything the server sent it.
    """

    def __init__(
        self,
        *,
        spread: Spread,
        limits: Limits,
        options: Options,
        prefix: str,
        traffic: Traffic,
        nursery: trio.Nursery,
        budget: trio.CancelScope,
        generated: Generated,
        watches: frozenset[str],
    ) -> None:
        self.spread = spread
        """The URL of each connection the case opens (one URL: always that one)."""
        self.limits = limits
        self.options = options
        self.traffic = traffic
        self.generated = generated
        """The run's generated messages, shared by its cases (the negative section)."""
        self._prefix = prefix
        self._nursery = nursery
        self._budget = budget
        self._tolerated = ASYNCHRONOUS - watches
        self._clients: list[CaseClient] = []
        self._connections: list[Connection] = []

    def name(self, label: str) -> str:
        """A user, room or call id for `label`, unique to this case; names sort like labels."""
        return f"{self._prefix}-{label}"

    async def client(self, label: str, *, device: str | None = None) -> CaseClient:
        """A session of user `label` (several calls with the same label: several devices),
        skipping the asynchronous messages the case does not watch."""
        client = await CaseClient.open(
            self._nursery,
            self.spread.next(),
            user_id=self.name(label),
            device_id=device,
            traffic=self.traffic,
        )
        assert isinstance(client, CaseClient)  # `open` builds the class it is called on
        client.tolerated, client.skipped, client.spread = self._tolerated, Counter(), self.spread
        self._clients.append(client)
        return client

    async def admin(self, method: str, path: str) -> int:
        """The status of a request to the server's admin API (a cluster: any node), with
        `Options.admin_token`; without one, the case is skipped."""
        token = self.options.admin_token
        if token is None:
            raise Skip("needs the server's admin API: run with --admin-token")
        return await admin_request(self.spread.next(), method, path, token)

    async def clients(self, *labels: str) -> list[CaseClient]:
        return [await self.client(label) for label in labels]

    async def connection(self) -> Connection:
        """A connection that has not said `hello`."""
        connection = await Connection.open(self._nursery, self.spread.next(), traffic=self.traffic)
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

    def call_lasts(self, what: str, ms: int) -> None:
        """`Skip` unless a call may stay up for `ms` (`what` needs that) within the server's
        `max_call_duration_ms`: past it, the server rightly ends the call."""
        cap = self.limits.max_call_duration_ms
        if ms + CALL_MARGIN_MS > cap:
            raise Skip(
                f"{what} needs a call up for {ms} ms (+{CALL_MARGIN_MS}), longer than"
                f" max_call_duration_ms {cap}"
            )

    def need_connections(self, count: int, why: str) -> None:
        if count > MAX_CONNECTIONS_PER_CASE:
            raise Skip(f"{why} needs {count} connections, more than {MAX_CONNECTIONS_PER_CASE}")

    async def settle(self) -> None:
        """Proves that no client has a message left unread: each pings, and the pong must be
        the next message."""
        for client in self._clients:
            if client.connection.close_code is None:
                await client.ping()

    def skipped(self) -> Counter[str]:
        """The asynchronous messages the case's clients skipped, by type."""
        return sum((client.skipped for client in self._clients), Counter())

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
