"""The heartbeats of every connection of a server, from one task."""

from __future__ import annotations

import heapq
import logging
import math
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from callbox.server.transport.connection import Connection

__all__ = ["Heartbeats"]

logger = logging.getLogger("callbox.transport")


class Heartbeats:
    """The heartbeats of many connections, from one task: a heap of when each is next due.

    An open connection costs an entry here rather than a task of its own (a task and its
    stack take ~2.5 KB; most of a signaling server's connections are idle). An entry is only
    ever early: a connection that received data since is put back at its new time. What a
    heartbeat does (ping, or close a silent peer) is the connection's `_heartbeat`.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Connection]] = []
        self._wakeup = trio.CancelScope()

    def add(self, conn: Connection, due: float) -> None:
        heapq.heappush(self._heap, (due, conn.id, conn))
        self._wakeup.deadline = min(self._wakeup.deadline, due)

    async def run(self) -> None:
        heap = self._heap
        while True:
            self._wakeup = trio.CancelScope(deadline=heap[0][0] if heap else math.inf)
            with self._wakeup:
                await trio.sleep_forever()
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                _, _, conn = heapq.heappop(heap)
                due = conn._next_heartbeat()
                if due > now:  # data arrived meanwhile, or the entry was early
                    heapq.heappush(heap, (due, conn.id, conn))
                    continue
                try:
                    again = conn._heartbeat(now)
                except Exception:  # a bug: this connection's, not every connection's
                    logger.exception("%r: heartbeat failed; closing it", conn)
                    conn._read_scope.cancel()
                    continue
                if again is not None:
                    heapq.heappush(heap, (again, conn.id, conn))
            await trio.lowlevel.checkpoint()  # let a busy second of pings not starve others
