"""What a worker of a pool shares with its parent and answers a scrape with: its own families
and the other workers' samples, merged family by family (docs/decisions/0017-workers.md)."""

from __future__ import annotations

import re
import socket
from collections import Counter
from collections.abc import Mapping

import orjson
import trio
from prometheus_client.parser import text_string_to_metric_families

from callbox.server.metrics import Metrics
from callbox.server.workers import METRICS_SHARE_S, ParentLink


class Counted:
    """What a switchboard counts, fixed."""

    def __init__(self, connections: int, relays: int) -> None:
        self.received: Counter[str] = Counter(ice_candidate=relays)
        self.errors: Counter[str] = Counter()
        self._connections = connections

    def statistics(self) -> Mapping[str, int]:
        return {"connections": self._connections, "sessions": self._connections}


def test_a_scrape_of_one_worker_carries_every_worker_once_per_family() -> None:
    one, two = Metrics(Counted(3, 10), node="h/1"), Metrics(Counted(4, 20), node="h/2")
    one.others = {"h/2": two.render_own().decode()}
    text = one.render().decode()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    for name in families:
        assert len(re.findall(rf"^# TYPE {name}(_total)? ", text, re.MULTILINE)) == 1, name
    connections = {s.labels["node"]: s.value for s in families["callbox_connections"].samples}
    assert connections == {"h/1": 3, "h/2": 4}
    received = families["callbox_messages_received"].samples
    assert {(s.labels["node"], s.value) for s in received} == {("h/1", 10), ("h/2", 20)}
    buckets = [s for s in families["callbox_message_seconds"].samples if s.name.endswith("_count")]
    assert {s.labels["node"] for s in buckets} == {"h/1", "h/2"}
    assert {s.labels["node"] for s in families["process_resident_memory_bytes"].samples} == {
        "h/1",
        "h/2",
    }
    assert one.render_own().count(b'node="h/2"') == 0  # what it shares is its own alone


async def test_a_worker_shares_its_metrics_and_drains_when_its_parent_is_gone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    parent_end, worker_end = socket.socketpair()
    metrics = Metrics(Counted(1, 5), node="h/7")
    link = ParentLink([], worker_end)
    drain = trio.Event()
    parent = trio.SocketStream(trio.socket.from_stdlib_socket(parent_end))
    buffer = b""

    async def message() -> dict[str, object]:
        nonlocal buffer
        while len(buffer) < 4 or len(buffer) < 4 + int.from_bytes(buffer[:4], "big"):
            buffer += await parent.receive_some()
        size = int.from_bytes(buffer[:4], "big")
        payload, buffer = buffer[4 : 4 + size], buffer[4 + size :]
        decoded: dict[str, object] = orjson.loads(payload)
        return decoded

    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.keep_in_touch, metrics, drain)
        assert await message() == {"ready": "h/7"}
        with trio.fail_after(2 * METRICS_SHARE_S):
            shared = await message()
        assert 'node="h/7"' in str(shared["metrics"])
        others = Metrics(Counted(2, 0), node="h/8").render_own().decode()
        answer = orjson.dumps({"others": {"h/8": others}})
        await parent.send_all(len(answer).to_bytes(4, "big") + answer)
        with trio.fail_after(1):
            while not metrics.others:
                await trio.sleep(0.01)
        assert b'node="h/8"' in metrics.render()
        await parent.aclose()  # the parent is gone
        with trio.fail_after(1):
            await drain.wait()
