"""The server's HTTP side: health, Prometheus metrics, unknown paths.

`/metrics` is read as Prometheus reads it, with `prometheus_client`'s own parser: families, types
and help text, and values counted from real traffic over a real socket.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import trio
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import accepted_call, start_server

from .wsclient import connect

WEB = Path(__file__).resolve().parents[2] / "src/callbox/web"

CALLBOX_FAMILIES = {
    "callbox_connections": "gauge",
    "callbox_sessions": "gauge",
    "callbox_users": "gauge",
    "callbox_calls": "gauge",
    "callbox_rooms": "gauge",
    "callbox_watched_users": "gauge",
    "callbox_messages_received": "counter",
    "callbox_calls_ended": "counter",
    "callbox_errors": "counter",
    "callbox_message_seconds": "histogram",
}
"""Every family of callbox's own, by the name the parser gives it (a counter's without `_total`),
with its type: the names deployment.md documents and dashboards query."""

LIBRARY_FAMILIES = {
    "process_cpu_seconds": "counter",
    "process_resident_memory_bytes": "gauge",
    "process_open_fds": "gauge",
    "process_start_time_seconds": "gauge",
    "python_info": "gauge",
    "python_gc_collections": "counter",
}
"""Some of the process's metrics, from prometheus_client's default collectors."""


async def http_get(url: str, path: str, method: str = "GET") -> tuple[int, dict[str, str], str]:
    """GET (or `method`) `path` of the server of `url`: the status, the header fields (names in
    lower case) and the body."""
    host, port = re.match(r"ws://([^:/]+):(\d+)", url).groups()  # type: ignore[union-attr]
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        response = b""
        while chunk := await stream.receive_some():
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *fields = head.decode().split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (field.partition(":") for field in fields)
    }
    return int(status_line.split()[1]), headers, body.decode()


async def scrape(url: str) -> dict[str, Metric]:
    """The families of `/metrics`, by name, as Prometheus would read them."""
    status, headers, text = await http_get(url, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(family: Metric, **labels: str) -> float:
    """The one sample of a gauge or counter `family` that has these labels."""
    (found,) = [
        sample.value
        for sample in family.samples
        if sample.name in (family.name, f"{family.name}_total")
        and {key: sample.labels.get(key) for key in labels} == labels
    ]
    return found


async def test_healthz_and_404(nursery: trio.Nursery) -> None:
    url = await start_server(nursery)
    status, _, body = await http_get(url, "/healthz")
    assert (status, body) == (200, "ok\n")
    status, _, _ = await http_get(url, "/nothing-here")
    assert status == 404


async def test_healthz_answers_head_and_refuses_other_methods(nursery: trio.Nursery) -> None:
    url = await start_server(nursery)
    status, headers, body = await http_get(url, "/healthz", "HEAD")
    assert (status, headers["content-length"], body) == (200, "3", "")
    for method in ("POST", "PUT", "DELETE"):
        status, headers, _ = await http_get(url, "/healthz", method)
        assert (status, headers["allow"]) == (405, "GET, HEAD")


async def test_the_client_s_type_declarations_are_served_beside_it(nursery: trio.Nursery) -> None:
    url = await start_server(nursery)
    status, headers, body = await http_get(url, "/callbox.d.ts")
    assert status == 200
    assert headers["content-type"] == "application/typescript; charset=utf-8"
    assert body == (WEB / "callbox.d.ts").read_text(encoding="utf-8")


async def test_metrics_have_types_help_process_metrics_and_a_node_label(
    nursery: trio.Nursery,
) -> None:
    url = await start_server(nursery)
    families = await scrape(url)
    types = {name: family.type for name, family in families.items()}
    assert types.items() >= CALLBOX_FAMILIES.items()
    assert types.items() >= LIBRARY_FAMILIES.items()
    for family in families.values():
        assert family.documentation, f"{family.name} has no help text"
        for sample in family.samples:
            assert sample.labels["node"] == socket.gethostname(), sample
    assert value(families["process_resident_memory_bytes"]) > 1_000_000


async def test_metrics_count_what_happened(nursery: trio.Nursery) -> None:
    url = await start_server(nursery)
    async with connect(url, "alice") as alice, connect(url, "bob") as bob:
        await accepted_call(alice, bob)
        during = await scrape(url)
        assert value(during["callbox_calls"]) == 1
        assert value(during["callbox_sessions"]) == 2
        assert value(during["callbox_connections"]) == 2
        offer = {"type": "sdp_offer", "call_id": "call-0001", "to": "alice", "sdp": "v=0"}
        await bob.send(offer)
        await alice.expect("sdp_offer")
        await bob.send({**offer, "call_id": "call-9999"})
        await bob.expect("error", code="unknown_call")
        await bob.send({"type": "hangup", "call_id": "call-0001"})
        await bob.expect("call_ended")
        await alice.expect("call_ended")
        after = await scrape(url)
    received = after["callbox_messages_received"]
    assert value(received, type="sdp_offer") == 2
    assert value(after["callbox_calls_ended"], reason="hangup") == 1
    assert value(after["callbox_errors"], code="unknown_call") == 1
    total = sum(sample.value for sample in received.samples if sample.name.endswith("_total"))
    assert total >= 7  # two hellos, the call's set-up and end, two offers
    handled = after["callbox_message_seconds"]
    (count,) = [sample.value for sample in handled.samples if sample.name.endswith("_count")]
    (infinite,) = [sample.value for sample in handled.samples if sample.labels.get("le") == "+Inf"]
    assert count == infinite == total
    assert value(after["callbox_calls"]) == 0
