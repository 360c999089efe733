"""Session timers: one task and a heap for every session's timers, not a task each."""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable

import trio

from callbox.core.actions import TimerKey

STALE_ENTRIES_KEPT = 64
"""Cancelled entries the heap may hold beyond twice the live timers before it is rebuilt."""


class SessionTimers:
    """The timers that belong to a session rather than a call: the hello timeout (armed for
    every connection), the reconnect grace, the ICE credentials' refresh.

    A task per timer cost every connecting client a task until its hello, and cancelling one
    raised `Cancelled` through the canceller's stack: CPython then kept a frame object for each
    frame of that stack, the connection's read loop included, for as long as the connection
    lived (~230 bytes per idle client). Here a timer is an entry in a heap, and cancelling one
    forgets its deadline: the entry is dropped when it comes up. Call timers stay tasks in their
    call's nursery (`app.CallTasks`), which ends them all at once with the call.
    """

    def __init__(self, fire: Callable[[TimerKey], None]) -> None:
        self._fire = fire
        self._due: dict[TimerKey, float] = {}
        self._heap: list[tuple[float, int, TimerKey]] = []
        self._order = itertools.count()  # keeps keys, which do not compare, out of the ordering
        self._wake = trio.Event()
        self._sleeping_until = math.inf

    def __len__(self) -> int:
        return len(self._due)

    def start(self, key: TimerKey, deadline: float) -> None:
        """Arm `key` for `deadline`, replacing the deadline it had."""
        self._due[key] = deadline
        heapq.heappush(self._heap, (deadline, next(self._order), key))
        if deadline < self._sleeping_until:
            self._wake.set()

    def cancel(self, key: TimerKey) -> None:
        """Forget `key`'s deadline. Its heap entry is dropped when due, or sooner, when the
        heap holds more than twice the live timers (every connection's hello timeout is
        cancelled within a second: lazily, they would all wait `HELLO_TIMEOUT_MS` in the heap)."""
        self._due.pop(key, None)
        if len(self._heap) > 2 * len(self._due) + STALE_ENTRIES_KEPT:
            self._heap = [(deadline, next(self._order), k) for k, deadline in self._due.items()]
            heapq.heapify(self._heap)

    async def run(self) -> None:
        """Fire each timer when it is due, until cancelled."""
        due = self._due
        while True:
            heap = self._heap  # rebuilt by `cancel` while this task sleeps
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                deadline, _, key = heapq.heappop(heap)
                if due.get(key) == deadline:  # neither cancelled nor re-armed since
                    del due[key]
                    self._fire(key)
            self._sleeping_until = heap[0][0] if heap else math.inf
            self._wake = trio.Event()
            with trio.move_on_at(self._sleeping_until):
                await self._wake.wait()
