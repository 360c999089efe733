"""Failed sign-ins slow down whoever keeps failing, keyed by network address.

A client guessing tokens gets every answer at once until `FAILURES_BEFORE_DELAY` failures from its
address; from then on each `hello` from that address is answered only after a delay that doubles
with every further failure, up to `LONGEST_DELAY_S`, and resets once the address has not failed
for `FAILURES_REMEMBERED_S`. nextcloud-spreed-signaling throttles the same way. An IPv6 client
is keyed by its /64, the smallest network a subscriber is usually given, so hopping addresses
inside its own network gains it nothing.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

from attrs import define

FAILURES_BEFORE_DELAY = 10
FIRST_DELAY_S = 0.1
LONGEST_DELAY_S = 10.0
FAILURES_REMEMBERED_S = 600.0
ADDRESSES_REMEMBERED = 65_536
"""Addresses with failures that are tracked at once; the longest quiet is forgotten first."""


def address_key(host: str) -> str:
    """What failures are counted against: an IPv4 address, an IPv6 address's /64 (an IPv4
    address mapped into IPv6 counts as itself), or `host` as given if it is not an address."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@define
class _Failures:
    count: int
    last: float


class AuthThrottle:
    """Counts failed sign-ins per address key and says how long the next one must wait."""

    def __init__(self, capacity: int = ADDRESSES_REMEMBERED) -> None:
        self._capacity = capacity
        self._failures: OrderedDict[str, _Failures] = OrderedDict()

    def delay(self, key: str, now: float) -> float:
        """Seconds a `hello` from `key` waits before it is answered (0: at once)."""
        failures = self._failures.get(key)
        if failures is None:
            return 0.0
        if now - failures.last >= FAILURES_REMEMBERED_S:
            del self._failures[key]
            return 0.0
        beyond = failures.count - FAILURES_BEFORE_DELAY
        if beyond < 0:
            return 0.0
        delay: float = FIRST_DELAY_S * 2.0 ** min(beyond, 32)
        return min(LONGEST_DELAY_S, delay)

    def failed(self, key: str, now: float) -> None:
        failures = self._failures.get(key)
        if failures is None or now - failures.last >= FAILURES_REMEMBERED_S:
            self._failures[key] = _Failures(count=1, last=now)
        else:
            failures.count += 1
            failures.last = now
        self._failures.move_to_end(key)
        if len(self._failures) > self._capacity:
            self._failures.popitem(last=False)

    def __len__(self) -> int:
        return len(self._failures)
