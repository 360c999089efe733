"""What counting one relayed message costs: callbox's plain counts against prometheus_client's.

The relay path counts every message twice: its type (`Counter[str]` increment) and the time it
took (a bisect into a local histogram). This measures those against what an idiomatic
`prometheus_client` port would do per message: a labelled `Counter` (`.labels(t).inc()`, and a
child bound once), a `Histogram.observe`, each of which takes a lock; and the same in the
library's multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`, values in mmapped files), measured in a
child process because the mode is chosen when the library is imported. It also times a scrape of
`Metrics.render()` (the custom collector, the process metrics and the text).

    .venv/bin/python bench/metrics_cost.py [--repeat 7] [--number 200000]

Prints a Markdown table: nanoseconds per operation, the best of `--repeat` runs (the least
disturbed by the rest of the machine). docs/decisions/0013-metrics.md quotes a run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import timeit
from collections import Counter
from collections.abc import Callable

from callbox.server.metrics import MESSAGE_BUCKETS_S, Histogram, Metrics


def best_ns(operation: Callable[[], object], number: int, repeat: int) -> float:
    """Nanoseconds per call of `operation`, best of `repeat` runs of `number` calls, less the
    cost of the loop and the call themselves (timed on a function that does nothing)."""
    runs = timeit.repeat(operation, number=number, repeat=repeat)
    empty = timeit.repeat(lambda: None, number=number, repeat=repeat)
    return (min(runs) - min(empty)) / number * 1e9


def local_costs(number: int, repeat: int) -> dict[str, float]:
    received: Counter[str] = Counter()
    histogram = Histogram(MESSAGE_BUCKETS_S)

    def count() -> None:
        received["sdp_offer"] += 1

    return {
        "dict increment (Counter[str], callbox)": best_ns(count, number, repeat),
        "histogram bisect (callbox)": best_ns(lambda: histogram.observe(0.000_04), number, repeat),
    }


def library_costs(number: int, repeat: int) -> dict[str, float]:
    """prometheus_client's own metrics, in whichever mode this process imported it in."""
    from prometheus_client import CollectorRegistry  # noqa: PLC0415 (the mode is set by env)
    from prometheus_client import Counter as PromCounter  # noqa: PLC0415
    from prometheus_client import Histogram as PromHistogram  # noqa: PLC0415

    registry = CollectorRegistry()
    counter = PromCounter("bench_received", "", ["type"], registry=registry)
    child = counter.labels("sdp_offer")
    histogram = PromHistogram("bench_seconds", "", buckets=MESSAGE_BUCKETS_S, registry=registry)
    return {
        "Counter.labels(type).inc()": best_ns(
            lambda: counter.labels("sdp_offer").inc(), number, repeat
        ),
        "Counter child .inc()": best_ns(child.inc, number, repeat),
        "Histogram.observe()": best_ns(lambda: histogram.observe(0.000_04), number, repeat),
    }


def multiprocess_costs(number: int, repeat: int) -> dict[str, float]:
    """`library_costs` in a child process with PROMETHEUS_MULTIPROC_DIR set."""
    with tempfile.TemporaryDirectory() as directory:
        done = subprocess.run(
            [sys.executable, __file__, "--child", "--number", str(number), "--repeat", str(repeat)],
            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory},
            capture_output=True,
            text=True,
            check=True,
        )
    costs: dict[str, float] = json.loads(done.stdout)
    return {f"{name}, multiprocess mode": ns for name, ns in costs.items()}


class _Board:
    """A switchboard's counts as a busy server has them: every type and error code seen."""

    def __init__(self) -> None:
        self.received = Counter({f"type_{index}": 1_000 * index for index in range(19)})
        self.errors = Counter({f"code_{index}": index for index in range(19)})

    def statistics(self) -> dict[str, int]:
        return dict.fromkeys(("connections", "sessions", "users", "calls", "rooms"), 1000) | {
            "watched_users": 10
        }


def scrape_us(repeat: int) -> float:
    metrics = Metrics(_Board(), node="bench")
    for reason in ("hangup", "rejected", "busy", "ring_timeout", "disconnected"):
        metrics.calls_ended[reason] += 1
    return min(timeit.repeat(metrics.render, number=100, repeat=repeat)) / 100 * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=200_000, help="calls per run")
    parser.add_argument("--repeat", type=int, default=7, help="runs; the best counts")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(library_costs(args.number, args.repeat)))
        return 0
    costs = local_costs(args.number, args.repeat)
    costs |= library_costs(args.number, args.repeat)
    costs |= multiprocess_costs(args.number, args.repeat)
    print(f"Python {sys.version.split()[0]}, {args.repeat} runs of {args.number:,} calls, best\n")
    print("| operation | ns |\n|---|---:|")
    for name, ns in costs.items():
        print(f"| {name} | {ns:,.0f} |")
    print(
        f"\nA scrape (Metrics.render(), process metrics included): {scrape_us(args.repeat):,.0f} us"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
