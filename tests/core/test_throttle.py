"""The sign-in throttle: which address a failure counts against, and the delay it grows to."""

from __future__ import annotations

import pytest

from callbox.core.throttle import (
    FAILURES_BEFORE_DELAY,
    FAILURES_REMEMBERED_S,
    LONGEST_DELAY_S,
    AuthThrottle,
    address_key,
)


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::9", "2001:db8:1:2::/64"),  # the same /64: one key
        ("[2001:db8:1:3::1]", "2001:db8:1:3::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),  # IPv4 mapped into IPv6 is that IPv4 address
        ("unknown", "unknown"),
        ("", ""),
    ],
)
def test_address_key(host: str, key: str) -> None:
    assert address_key(host) == key


def failing(throttle: AuthThrottle, key: str, times: int, now: float = 0.0) -> None:
    for _ in range(times):
        throttle.failed(key, now)


def test_the_delay_starts_after_ten_failures_and_doubles_to_its_cap() -> None:
    throttle = AuthThrottle()
    failing(throttle, "a", FAILURES_BEFORE_DELAY - 1)
    assert throttle.delay("a", 1.0) == 0
    delays = []
    for _ in range(12):
        throttle.failed("a", 1.0)
        delays.append(throttle.delay("a", 1.0))
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8]
    assert delays[-1] == LONGEST_DELAY_S
    assert delays == sorted(delays)


def test_other_addresses_are_not_delayed() -> None:
    throttle = AuthThrottle()
    failing(throttle, "a", 50)
    assert throttle.delay("b", 0.0) == 0


def test_failures_are_forgotten_after_a_quiet_spell() -> None:
    throttle = AuthThrottle()
    failing(throttle, "a", 20)
    assert throttle.delay("a", FAILURES_REMEMBERED_S - 1) > 0
    assert throttle.delay("a", FAILURES_REMEMBERED_S) == 0
    assert len(throttle) == 0
    throttle.failed("a", 2 * FAILURES_REMEMBERED_S)  # counting starts over
    assert throttle.delay("a", 2 * FAILURES_REMEMBERED_S) == 0


def test_the_addresses_tracked_are_bounded_forgetting_the_longest_quiet() -> None:
    throttle = AuthThrottle(capacity=3)
    for now, key in enumerate("abcd"):
        failing(throttle, key, 20, now=float(now))
    assert len(throttle) == 3
    assert throttle.delay("a", 4.0) == 0
    assert throttle.delay("d", 4.0) > 0
