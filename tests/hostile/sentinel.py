"""The sentinel: a 1:1 call between two bystanders that keeps relaying numbered ICE candidates.

Run as its own process (``python -m tests.hostile.sentinel URL TAG``) so that what it measures is
the server's relay latency, not how long the attacking test process kept its own event loop busy
(hypothesis generating inputs holds the test's thread for tens of milliseconds at a time).

Protocol with the test, one line each: it prints ``ready`` once the call is up, relays until a
line arrives on stdin, then stops sending, waits (bounded) for every candidate sent to arrive,
ends the call and prints its `Report` as one JSON line.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import attrs
import orjson
import trio

from tests.server.wsclient import Client, connect

PERIOD_S = 0.01
"""A candidate every 10 ms: fine enough to measure stalls of tens of ms, within
MESSAGES_PER_SECOND."""
DRAIN_S = 5.0
"""How long the receiver waits, once sending stops, for the candidates still on their way."""
SETUP_S = 10.0


@attrs.define
class Report:
    """What the sentinel saw: counts, order, and the relay latency of each candidate."""

    sent: int = 0
    received: int = 0
    out_of_order: list[tuple[int, int]] = attrs.field(factory=list)  # (expected, got)
    unexpected: list[dict[str, Any]] = attrs.field(factory=list)  # anything but its candidates
    worst_ms: float = 0.0
    worst_at: int = -1  # the number of the candidate with the worst latency


def candidate(number: int) -> dict[str, Any]:
    """The candidate numbered `number`; its text carries when it was sent (this process's
    monotonic clock, which the receiver shares)."""
    return {"candidate": f"candidate:{number} {time.perf_counter_ns()}", "sdpMid": "0"}


async def relay(caller: Client, callee: Client, call_id: str, report: Report) -> None:
    """Send from `caller` until stdin says stop, while `callee` checks each arrival; then wait,
    at most `DRAIN_S`, for the candidates still on their way."""
    stop = trio.Event()
    stopped = trio.Event()  # the sender has sent its last

    async def send() -> None:
        to = callee.welcome["user_id"]
        while not stop.is_set():
            relayed = {"call_id": call_id, "to": to, "candidate": candidate(report.sent)}
            await caller.send({"type": "ice_candidate", **relayed})
            report.sent += 1
            await trio.sleep(PERIOD_S)
        stopped.set()

    async def receive() -> None:
        while True:
            message = await callee.receive()
            arrived = time.perf_counter_ns()
            if message["type"] != "ice_candidate" or message["call_id"] != call_id:
                report.unexpected.append(message)
                continue
            number_text, sent_text = message["candidate"]["candidate"].split()
            number = int(number_text.removeprefix("candidate:"))
            if number != report.received:
                report.out_of_order.append((report.received, number))
            report.received = number + 1
            latency_ms = (arrived - int(sent_text)) / 1e6
            if latency_ms > report.worst_ms:
                report.worst_ms, report.worst_at = latency_ms, number

    async def wait_for_stop() -> None:
        await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        stop.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_for_stop)
        nursery.start_soon(send)
        nursery.start_soon(receive)
        await stopped.wait()
        with trio.move_on_after(DRAIN_S):
            while report.received < report.sent:
                await trio.sleep(PERIOD_S)
        nursery.cancel_scope.cancel()


async def main(url: str, tag: str) -> None:
    report = Report()
    call_id = f"sentinel-{tag}"
    async with (
        connect(url, f"sentinel-a-{tag}") as caller,
        connect(url, f"sentinel-b-{tag}") as callee,
    ):
        with trio.fail_after(SETUP_S):
            to = [callee.welcome["user_id"]]
            media = {"audio": True, "video": False}
            await caller.send(
                {"type": "call_initiate", "call_id": call_id, "to": to, "media": media}
            )
            await caller.expect("call_ringing", call_id=call_id)
            await callee.expect("call_incoming", call_id=call_id)
            await callee.send({"type": "call_answer", "call_id": call_id})
            await caller.expect("call_accepted", call_id=call_id)
            await callee.expect("call_accepted", call_id=call_id)
        print("ready", flush=True)
        await relay(caller, callee, call_id, report)
        # Reported before closing: trio-websocket may fail while closing (it answers a ping
        # after its close frame, its issue #175), which says nothing about the server.
        print(orjson.dumps(attrs.asdict(report)).decode(), flush=True)
        for client in (caller, callee):
            await client.send({"type": "bye"})


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2])
