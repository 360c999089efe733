"""Prometheus metrics: counted with plain ints on the hot path, exposed by `prometheus_client`.

The relay path counts every message: a `Counter` increment per message type and error code and
a bisect into a local histogram per handled message. `prometheus_client`'s own metrics take a
lock on every increment, which a single-threaded server does not need and which costs several
times a dict increment (bench/metrics_cost.py; docs/decisions/0013-metrics.md has the figures).
So the counts stay local, and `Metrics` is a custom collector that `prometheus_client` asks for
them at scrape time, together with the switchboard's gauges (read then, never kept up to date)
and the library's own process, platform and garbage-collector metrics.

Every sample carries a `node` label, the process's own included: with several worker
processes (each a node of a cluster) no two processes ever emit the same series, so their
expositions can be scraped one by one or merged, and Prometheus sums them with
`sum without (node)`. Why a label rather than the library's multiprocess mode: the decision record.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families

CONTENT_TYPE = choose_encoder("")[1]
"""The content type `prometheus_client` pairs with the text format `generate_latest` writes (a
scrape that asks for nothing in particular gets it; so does every Prometheus)."""

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

STORE_BUCKETS_S: tuple[float, ...] = (
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.002_5,
    0.005,
    0.01,
    0.025,
    0.1,
    0.5,
    2.0,
)
"""Upper bounds of a cluster node's store round-trip histogram, s (retries included: up to the
2 s a request is retried for)."""

CLUSTER_HELP: Mapping[str, str] = {
    "commit_round_trips": "Commits sent to the cluster's store (each a batch of transactions).",
    "load_round_trips": "Loads of records and outboxes sent to the cluster's store.",
    "fetch_round_trips": "Reads of frames from session outboxes in the cluster's store.",
    "transactions": "Transactions (events) the cluster's store answered.",
    "conflicts": "Transactions refused for a record changed since it was read (then run again).",
    "retries": "Requests sent again because the cluster's store was out of reach.",
    "catch_ups": "Frames found missing by the periodic outbox check (a wake-up lost).",
    "not_applied": "Events not applied: the store out of reach, or too many conflicts.",
}
"""The help text of each of a cluster node's counts, exposed as `callbox_cluster_<name>`."""

GAUGE_HELP: Mapping[str, str] = {
    "connections": "Open WebSocket connections of this node, signed in or not.",
    "sessions": "Sessions, connected or within their reconnect grace period.",
    "users": "Users with at least one session.",
    "calls": "Calls ringing or running.",
    "rooms": "Rooms with at least one member.",
    "watched_users": "Users whose presence at least one session watches.",
}
"""The help text of each of the switchboard's `statistics()`, exposed as `callbox_<name>`."""


class Counted(Protocol):
    """What the switchboard counts and holds, read at scrape time."""

    @property
    def received(self) -> Mapping[str, int]:
        """Client messages decoded, by type."""
        ...

    @property
    def errors(self) -> Mapping[str, int]:
        """`error` messages sent, by code."""
        ...

    def statistics(self) -> Mapping[str, int]:
        """How many connections and records there are now, by kind."""
        ...


class WebhookCounts(Protocol):
    """What the webhooks' delivery counts (server/webhooks.py)."""

    @property
    def counts(self) -> Mapping[str, int]:
        """Deliveries by outcome: delivered, retried, failed, dropped."""
        ...

    def statistics(self) -> Mapping[str, int]:
        """`queued`: deliveries waiting for a sender; and the counts."""
        ...


WEBHOOK_OUTCOMES = ("delivered", "retried", "failed", "dropped")


class Histogram:
    """A histogram without locks: a list of counts, one per bucket, and the sum."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        """(`le`, count of observations at most `le`) for each bucket, `+Inf` last."""
        bounds = [str(bound) for bound in self.buckets] + ["+Inf"]
        running = 0
        pairs: list[tuple[str, float]] = []
        for bound, count in zip(bounds, self.counts, strict=True):
            running += count
            pairs.append((bound, running))
        return pairs


class Metrics:
    """The server's own counts, and the collector that exposes them with the process's metrics.

    `calls_ended` and `message_seconds` are counted by the app; the rest is read from `counted`
    when `/metrics` is scraped.
    """

    def __init__(self, counted: Counted, node: str, webhooks: WebhookCounts | None = None) -> None:
        self.calls_ended: Counter[str] = Counter()
        self.message_seconds = Histogram(MESSAGE_BUCKETS_S)
        self.cluster: Mapping[str, int] | None = None
        """A cluster node's counts of its requests to the store (`CLUSTER_HELP`)."""
        self.store_seconds = Histogram(STORE_BUCKETS_S)
        """A cluster node's round trips to the store, retries included."""
        self.node = node
        self.others: dict[str, str] = {}
        """The other workers' latest expositions, by node, when this node is a worker of a
        pool (`callbox.server.workers`): they share its port, so a scrape reaches one of them,
        and it answers for all."""
        self._counted = counted
        self._webhooks = webhooks
        # The library's default collectors, in a registry of this server's own rather than the
        # global one: a test process runs many servers, and each exposes only its own node.
        self._library = CollectorRegistry()
        ProcessCollector(registry=self._library)
        PlatformCollector(registry=self._library)
        GCCollector(registry=self._library)

    def render(self) -> bytes:
        """The exposition of a scrape, in `CONTENT_TYPE`: this node's, and the latest of the
        `others` of its worker pool, merged family by family."""
        if not self.others:
            return generate_latest(self)
        return generate_latest(_Merged(self, list(self.others.values())))

    def render_own(self) -> bytes:
        """This node's exposition alone (what a worker shares with the others)."""
        return generate_latest(self)

    def collect(self) -> Iterator[Metric]:
        """Called by `prometheus_client` at each scrape (the `Collector` protocol)."""
        for family in self._families():
            family.samples = [
                sample._replace(labels={**sample.labels, "node": self.node})
                for sample in family.samples
            ]
            yield family

    def _families(self) -> Iterator[Metric]:
        counted = self._counted
        for name, value in counted.statistics().items():
            yield GaugeMetricFamily(f"callbox_{name}", GAUGE_HELP[name], value=value)
        yield _counter(
            "callbox_messages_received",
            "Client messages decoded, by type.",
            "type",
            counted.received,
        )
        yield _counter(
            "callbox_calls_ended",
            "Calls ended, by the reason of their end (call_ended.reason).",
            "reason",
            self.calls_ended,
        )
        yield _counter("callbox_errors", "Error messages sent, by code.", "code", counted.errors)
        histogram = self.message_seconds
        yield HistogramMetricFamily(
            "callbox_message_seconds",
            "Time to handle one client message (decode, validate, route, write), s.",
            buckets=histogram.cumulative(),
            sum_value=histogram.total,
        )
        if self.cluster is not None:
            yield from self._cluster_families(self.cluster)
        if self._webhooks is not None:
            counts = self._webhooks.counts
            yield _counter(
                "callbox_webhooks",
                "Webhook deliveries (an event for one URL) by outcome: delivered; retried (an"
                " attempt to be made again, counted each time); failed (a 4xx, or given up);"
                " dropped (the queue was full, or the event stopped mattering).",
                "outcome",
                {outcome: counts.get(outcome, 0) for outcome in WEBHOOK_OUTCOMES},
            )
            yield GaugeMetricFamily(
                "callbox_webhooks_queued",
                "Webhook deliveries waiting for a sender.",
                value=self._webhooks.statistics()["queued"],
            )
        yield from self._library.collect()

    def _cluster_families(self, counts: Mapping[str, int]) -> Iterator[Metric]:
        for name, documentation in CLUSTER_HELP.items():
            yield CounterMetricFamily(f"callbox_cluster_{name}", documentation, counts.get(name, 0))
        histogram = self.store_seconds
        yield HistogramMetricFamily(
            "callbox_cluster_store_seconds",
            "Time for the cluster's store to answer a commit or load, retries included, s.",
            buckets=histogram.cumulative(),
            sum_value=histogram.total,
        )


class _Merged:
    """A collector of `own`'s families with the samples of `others` (expositions in the text
    format) added to the family of the same name: each sample keeps its own `node` label, so
    no two are the same series, and a family is written once, as the format requires."""

    def __init__(self, own: Metrics, others: list[str]) -> None:
        self._own = own
        self._others = others

    def collect(self) -> Iterator[Metric]:
        families = {family.name: family for family in self._own.collect()}
        for text in self._others:
            for family in text_string_to_metric_families(text):
                mine = families.get(family.name)
                if mine is None:
                    families[family.name] = family
                elif mine.type == family.type:
                    mine.samples.extend(family.samples)
        yield from families.values()


def _counter(name: str, documentation: str, label: str, values: Mapping[str, int]) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for key, count in sorted(values.items()):
        family.add_metric([key], count)
    return family
