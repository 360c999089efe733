"""The server's HTTP side: health, Prometheus metrics, unknown paths."""

from __future__ import annotations

import re

import trio

from tests.helpers import accepted_call, start_server

from .wsclient import connect


async def http_get(url: str, path: str) -> tuple[int, str]:
    host, port = re.match(r"ws://([^:/]+):(\d+)", url).groups()  # type: ignore[union-attr]
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        response = b""
        while chunk := await stream.receive_some():
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


async def test_healthz_and_404(nursery: trio.Nursery) -> None:
    url = await start_server(nursery)
    assert await http_get(url, "/healthz") == (200, "ok\n")
    status, _ = await http_get(url, "/nothing-here")
    assert status == 404


async def test_metrics_count_what_happened(nursery: trio.Nursery) -> None:
    url = await start_server(nursery)
    async with connect(url, "alice") as alice, connect(url, "bob") as bob:
        await accepted_call(alice, bob)
        _, during = await http_get(url, "/metrics")
        assert "callbox_calls 1" in during
        assert "callbox_sessions 2" in during
        offer = {"type": "sdp_offer", "call_id": "call-0001", "to": "alice", "sdp": "v=0"}
        await bob.send(offer)
        await alice.expect("sdp_offer")
        await bob.send({**offer, "call_id": "call-9999"})
        await bob.expect("error", code="unknown_call")
        await bob.send({"type": "hangup", "call_id": "call-0001"})
        await bob.expect("call_ended")
        await alice.expect("call_ended")
        status, metrics = await http_get(url, "/metrics")
    assert status == 200
    assert 'callbox_messages_received_total{type="sdp_offer"} 2' in metrics
    assert 'callbox_calls_ended_total{reason="hangup"} 1' in metrics
    assert 'callbox_errors_total{code="unknown_call"} 1' in metrics
    received = sum(
        int(line.rpartition(" ")[2])
        for line in metrics.splitlines()
        if line.startswith("callbox_messages_received_total{")
    )
    assert received >= 7  # two hellos, the call's set-up and end, two offers
    assert f"callbox_message_seconds_count {received}" in metrics
    assert "callbox_calls 0" in metrics
