"""Prometheus metrics, in the text exposition format, with nothing but dict increments to count.

The hot path pays one dictionary increment per counted event and one bisect per relayed message;
the text is built only when `/metrics` is scraped. No client library: `prometheus_client` takes a
lock on every increment, which this single-threaded server does not need.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Mapping

MESSAGE_BUCKETS_S: tuple[float, ...] = (
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.002_5,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
)
"""Upper bounds of the message handling histogram, s: a relay takes microseconds here."""


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value

    def lines(self, name: str) -> Iterable[str]:
        cumulative = 0
        for bound, count in zip(self.buckets, self.counts, strict=False):
            cumulative += count
            yield f'{name}_bucket{{le="{bound}"}} {cumulative}'
        cumulative += self.counts[-1]
        yield f'{name}_bucket{{le="+Inf"}} {cumulative}'
        yield f"{name}_sum {self.total}"
        yield f"{name}_count {cumulative}"


class Metrics:
    """What the server counts; `render` turns it, and the switchboard's gauges, into text."""

    def __init__(self) -> None:
        self.calls_ended: Counter[str] = Counter()
        self.message_seconds = Histogram(MESSAGE_BUCKETS_S)

    def render(
        self, gauges: Mapping[str, int], received: Mapping[str, int], errors: Mapping[str, int]
    ) -> bytes:
        lines: list[str] = []
        for name, value in gauges.items():
            lines += [f"# TYPE callbox_{name} gauge", f"callbox_{name} {value}"]
        lines += _counter("callbox_messages_received_total", "type", received)
        lines += _counter("callbox_calls_ended_total", "reason", self.calls_ended)
        lines += _counter("callbox_errors_total", "code", errors)
        lines.append("# TYPE callbox_message_seconds histogram")
        lines += self.message_seconds.lines("callbox_message_seconds")
        return ("\n".join(lines) + "\n").encode()


def _counter(name: str, label: str, values: Mapping[str, int]) -> list[str]:
    lines = [f"# TYPE {name} counter"]
    lines += [f'{name}{{{label}="{key}"}} {count}' for key, count in sorted(values.items())]
    return lines
