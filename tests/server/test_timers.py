"""SessionTimers: one task fires every session timer when due, and a cancelled or re-armed
timer does not fire at its old deadline. Under MockClock, so due means due, not about due."""

from __future__ import annotations

import trio
import trio.testing

from callbox.core.actions import HelloTimer, TimerKey
from callbox.server.timers import STALE_ENTRIES_KEPT, SessionTimers


class Fired:
    def __init__(self) -> None:
        self.at: list[tuple[TimerKey, float]] = []

    def __call__(self, key: TimerKey) -> None:
        self.at.append((key, trio.current_time()))


def running_timers(nursery: trio.Nursery) -> tuple[SessionTimers, Fired]:
    """Session timers whose task runs in `nursery`, and what they fire, with its time."""
    fired = Fired()
    timers = SessionTimers(fired)
    nursery.start_soon(timers.run)
    return timers, fired


async def test_timers_fire_when_due_in_deadline_order(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    timers, fired = running_timers(nursery)
    start = trio.current_time()
    timers.start(HelloTimer(1), start + 10)
    await trio.sleep(1)
    timers.start(HelloTimer(2), start + 5)  # earlier than the one the task sleeps for
    await trio.sleep(20)
    assert fired.at == [(HelloTimer(2), start + 5), (HelloTimer(1), start + 10)]
    assert len(timers) == 0


async def test_a_cancelled_or_rearmed_timer_does_not_fire_at_its_old_deadline(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    timers, fired = running_timers(nursery)
    start = trio.current_time()
    timers.start(HelloTimer(1), start + 5)
    timers.start(HelloTimer(2), start + 5)
    timers.cancel(HelloTimer(1))
    timers.start(HelloTimer(2), start + 8)
    await trio.sleep(20)
    assert fired.at == [(HelloTimer(2), start + 8)]


async def test_a_timer_armed_while_firing_fires_too(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """What a fired timer's actions arm (a grace timer after a hello timeout, say) is kept."""
    start = trio.current_time()
    fired = Fired()

    def fire(key: TimerKey) -> None:
        fired(key)
        if key == HelloTimer(1):
            timers.start(HelloTimer(2), start + 3)

    timers = SessionTimers(fire)
    nursery.start_soon(timers.run)
    timers.start(HelloTimer(1), start + 2)
    await trio.sleep(10)
    assert fired.at == [(HelloTimer(1), start + 2), (HelloTimer(2), start + 3)]


async def test_cancelled_timers_do_not_pile_up(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Every connection's hello timeout is cancelled at its hello: 10,000 of them in a row
    leave a heap of a bounded size, and the live timer among them still fires."""
    timers, fired = running_timers(nursery)
    start = trio.current_time()
    timers.start(HelloTimer(0), start + 20)
    for conn in range(1, 10_001):
        timers.start(HelloTimer(conn), start + 10)
        timers.cancel(HelloTimer(conn))
    assert len(timers._heap) <= 2 * len(timers) + STALE_ENTRIES_KEPT + 1
    await trio.sleep(30)
    assert fired.at == [(HelloTimer(0), start + 20)]
