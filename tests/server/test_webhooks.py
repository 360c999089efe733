"""Webhooks end to end: the real server on 127.0.0.1 POSTs to a real receiver started by the
test (tests/server/webhook_receiver.py), which verifies each signature with the Standard
Webhooks library and each body against its schema. Every wait is under `MockClock`, so a 5 s
timeout or a backoff costs nothing; nothing here asserts how long anything took.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from callbox.core.actions import Notify
from callbox.server.webhooks import (
    MAX_QUEUED_DELIVERIES,
    DeliveryPolicy,
    Webhooks,
)
from tests.helpers import SDP, accepted_call, closed_port_url, http_request, initiate, start_server

from .webhook_receiver import HANG, Receiver, body_types, start_receiver
from .wsclient import connect

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
ONE_TO_ONE = [
    "call.initiated",
    "participant.joined",
    "call.answered",
    "participant.joined",
    "participant.left",
    "participant.left",
    "call.ended",
]
"""What a 1:1 call answered and hung up sends, in the order it happened."""


async def webhook_server(nursery: trio.Nursery, *urls: str, **settings: Any) -> str:
    return await start_server(
        nursery, webhook_urls=urls, webhook_secret=SECRET, ring_timeout_ms=30_000, **settings
    )


async def webhook_counts(url: str) -> dict[str, float]:
    """`callbox_webhooks_total` by outcome, read from /metrics as Prometheus reads it."""
    text = (await http_request(url, "/metrics")).body.decode()
    (family,) = (f for f in text_string_to_metric_families(text) if f.name == "callbox_webhooks")
    return {
        sample.labels["outcome"]: sample.value
        for sample in family.samples
        if sample.name == "callbox_webhooks_total"
    }


async def one_to_one_call(url: str) -> None:
    """alice calls bob, bob answers, they relay an offer, alice hangs up."""
    async with connect(url, "alice") as alice, connect(url, "bob") as bob:
        await accepted_call(alice, bob)
        await bob.send({"type": "sdp_offer", "call_id": "call-0001", "to": "alice", "sdp": SDP})
        await alice.expect("sdp_offer", sdp=SDP)
        await alice.send({"type": "hangup", "call_id": "call-0001"})
        await bob.expect("call_ended", reason="hangup")


async def test_every_event_of_a_call_reaches_every_url_signed_and_once(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    first, second = [await start_receiver(nursery, SECRET) for _ in range(2)]
    url = await webhook_server(nursery, first.url, second.url)
    await one_to_one_call(url)
    for receiver in (first, second):
        bodies = await receiver.wait_delivered(len(ONE_TO_ONE))
        assert Counter(body_types(bodies)) == Counter(ONE_TO_ONE)
        ended = next(body["data"] for body in bodies if body["type"] == "call.ended")
        assert ended["participants"] == ["alice", "bob"]
        assert ended["reason"] == "hangup"
        ids = [webhook_id for webhook_id, _ in receiver.delivered]
        assert len(set(ids)) == len(ids) and all(i.startswith("msg_") for i in ids)
    # The same event goes to both URLs under the same id.
    assert {i for i, _ in first.delivered} == {i for i, _ in second.delivered}
    assert await webhook_counts(url) == {
        "delivered": 2 * len(ONE_TO_ONE),
        "retried": 0,
        "failed": 0,
        "dropped": 0,
    }


async def test_a_500_is_retried_and_the_event_delivered_once(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    receiver = await start_receiver(nursery, SECRET, script=[500])
    url = await webhook_server(nursery, receiver.url, webhook_events=("call.ended",))
    await one_to_one_call(url)
    (ended,) = await receiver.wait_delivered(1)
    assert ended["type"] == "call.ended"
    first_try, second_try = receiver.attempts
    assert first_try == second_try  # same id, same body: a receiver can drop repeats
    assert await webhook_counts(url) == {"delivered": 1, "retried": 1, "failed": 0, "dropped": 0}


async def test_a_4xx_is_not_retried(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    receiver = await start_receiver(nursery, SECRET, script=[404])
    url = await webhook_server(nursery, receiver.url, webhook_events=("call.ended",))
    await one_to_one_call(url)
    await receiver.wait_until(lambda r: len(r.attempts) == 1)
    await trio.sleep(60)  # time for any retry there would be
    assert len(receiver.attempts) == 1
    assert await webhook_counts(url) == {"delivered": 0, "retried": 0, "failed": 1, "dropped": 0}


async def test_a_receiver_that_hangs_is_timed_out_and_tried_again(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    receiver = await start_receiver(nursery, SECRET, script=[HANG])
    url = await webhook_server(nursery, receiver.url, webhook_events=("call.ended",))
    await one_to_one_call(url)
    (ended,) = await receiver.wait_delivered(1)
    assert ended["type"] == "call.ended"
    assert len(receiver.attempts) == 2
    assert await webhook_counts(url) == {"delivered": 1, "retried": 1, "failed": 0, "dropped": 0}


async def test_a_receiver_that_is_down_is_retried_then_given_up(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    down = closed_port_url().replace("ws://", "http://")
    url = await webhook_server(nursery, down, webhook_events=("call.ended",))
    await one_to_one_call(url)
    await trio.sleep(DeliveryPolicy().give_up_after_s + DeliveryPolicy().max_retry_s)
    counts = await webhook_counts(url)
    assert counts["failed"] == 1 and counts["retried"] >= 3
    assert (counts["delivered"], counts["dropped"]) == (0, 0)


@pytest.mark.parametrize("receiver_state", ["hangs", "down"])
async def test_a_stuck_receiver_never_delays_call_set_up_or_relay(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, receiver_state: str
) -> None:
    """The call is set up and relays while every sender is stuck on the receiver: each of
    alice's steps is taken while the webhook of her call's start is still undelivered."""
    if receiver_state == "hangs":
        receiver: Receiver | None = await start_receiver(nursery, SECRET, script=[HANG] * 100)
        webhook_url = receiver.url
    else:
        receiver, webhook_url = None, closed_port_url().replace("ws://", "http://")
    url = await webhook_server(nursery, webhook_url)
    async with connect(url, "alice") as alice, connect(url, "bob") as bob:
        await alice.send(initiate("call-0001", "bob"))
        await alice.expect("call_ringing")
        await bob.expect("call_incoming")
        if receiver is not None:  # the senders hold call.initiated and participant.joined
            await receiver.wait_until(lambda r: r.hanging == 2)
        else:  # the senders have failed once and are waiting to try again
            while (await webhook_counts(url))["retried"] < 2:
                await trio.sleep(0)
        await bob.send({"type": "call_answer", "call_id": "call-0001"})
        await bob.expect("call_accepted", by="bob")
        await alice.expect("call_accepted", by="bob")
        for n in range(20):
            await bob.send(
                {"type": "sdp_offer", "call_id": "call-0001", "to": "alice", "sdp": f"{SDP}{n}"}
            )
            await alice.expect("sdp_offer", sdp=f"{SDP}{n}")
        await alice.send({"type": "hangup", "call_id": "call-0001"})
        await bob.expect("call_ended", reason="hangup")
        assert (await webhook_counts(url))["delivered"] == 0
    if receiver is not None:
        assert receiver.delivered == []


async def test_an_offline_callee_whose_push_brings_a_device_answers(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The backend gets call.ringing_offline, "pushes" bob's phone, which connects 2 s later
    (inside the ring) and answers."""
    receiver = await start_receiver(nursery, SECRET)
    url = await webhook_server(nursery, receiver.url)
    pushed = trio.Event()
    receiver.on_delivered = lambda body: (
        pushed.set() if body["type"] == "call.ringing_offline" else None
    )
    async with connect(url, "alice") as alice:
        await alice.send(initiate("call-0001", "bob"))
        await alice.expect("call_ringing", to=["bob"], offline=["bob"])
        await pushed.wait()
        ring = next(b for b in receiver.delivered if b[1]["type"] == "call.ringing_offline")[1]
        assert (ring["data"]["callee"], ring["data"]["caller"]) == ("bob", "alice")
        await trio.sleep(2)
        async with connect(url, "bob") as bob:
            incoming = await bob.expect("call_incoming", call_id="call-0001")
            assert incoming["expires_in_ms"] < 30_000
            await bob.send({"type": "call_answer", "call_id": "call-0001"})
            await bob.expect("call_accepted", by="bob")
            await alice.expect("call_accepted", by="bob")
    bodies = await receiver.wait_delivered(len(ONE_TO_ONE) + 1)
    assert "call.answered" in body_types(bodies)


async def test_an_offline_callee_who_never_comes_ends_the_call_offline(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    receiver = await start_receiver(nursery, SECRET)
    url = await webhook_server(nursery, receiver.url)
    async with connect(url, "alice") as alice:
        await alice.send(initiate("call-0001", "bob"))
        await alice.expect("call_ringing", offline=["bob"])
        await alice.expect("call_rejected", by="bob", reason="offline")
        await alice.expect("call_ended", reason="offline")
    bodies = await receiver.wait_delivered(5)
    assert Counter(body_types(bodies)) == Counter(
        [
            "call.initiated",
            "participant.joined",
            "call.ringing_offline",
            "participant.left",
            "call.ended",
        ]
    )
    ended = next(body["data"] for body in bodies if body["type"] == "call.ended")
    assert (ended["reason"], ended["by"], ended["started_at"]) == ("offline", "bob", None)


async def test_a_receiver_that_is_down_does_not_shorten_the_ring(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    down = closed_port_url().replace("ws://", "http://")
    url = await webhook_server(nursery, down)
    async with connect(url, "alice") as alice:
        await alice.send(initiate("call-0001", "bob"))
        await alice.expect("call_ringing", offline=["bob"])
        await trio.sleep(29)
        async with connect(url, "bob") as bob:
            await bob.expect("call_incoming", call_id="call-0001")
            await bob.send({"type": "call_answer", "call_id": "call-0001"})
            await alice.expect("call_accepted", by="bob")


# The delivery on its own: the queue's bound and stale rings -----------------------------------


def ring(call_id: str, expires_at_ms: int) -> Notify:
    data = {
        "call_id": call_id,
        "caller": "alice",
        "callee": "bob",
        "media": {"audio": True, "video": False},
        "metadata": None,
        "expires_at": expires_at_ms,
    }
    return Notify("call.ringing_offline", 1_700_000_000_000, data)


def ended(call_id: str) -> Notify:
    data = {
        "call_id": call_id,
        "reason": "hangup",
        "by": "alice",
        "initiator": "alice",
        "participants": ["alice"],
        "started_at": None,
        "ended_at": 1_700_000_001_000,
        "duration_ms": 0,
    }
    return Notify("call.ended", 1_700_000_001_000, data)


async def test_a_full_queue_drops_and_counts_instead_of_waiting() -> None:
    webhooks = Webhooks(["http://127.0.0.1:9/"], SECRET)  # no senders run: nothing is taken
    for n in range(MAX_QUEUED_DELIVERIES + 5):
        webhooks.notify(ended(f"call-{n:04}"))
    assert webhooks.counts == {"dropped": 5}
    assert webhooks.statistics()["queued"] == MAX_QUEUED_DELIVERIES


async def test_a_ring_for_a_call_that_ended_is_dropped_not_retried(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    receiver = await start_receiver(nursery, SECRET, script=[503])
    webhooks = Webhooks([receiver.url], SECRET, wall=lambda: 1_700_000_000.0)
    nursery.start_soon(webhooks.run)
    webhooks.notify(ring("call-0001", expires_at_ms=1_700_000_030_000))
    await receiver.wait_until(lambda r: len(r.attempts) == 1)
    webhooks.notify(ended("call-0001"))
    (body,) = await receiver.wait_delivered(1)
    assert body["type"] == "call.ended"
    await trio.sleep(DeliveryPolicy().give_up_after_s)
    assert webhooks.counts == {"retried": 1, "dropped": 1, "delivered": 1}
    assert len(receiver.attempts) == 2  # the ring once, the end once


async def test_a_ring_that_has_expired_is_dropped() -> None:
    webhooks = Webhooks(["http://127.0.0.1:9/"], SECRET, wall=lambda: 1_700_000_031.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(webhooks.run)
        webhooks.notify(ring("call-0001", expires_at_ms=1_700_000_030_000))
        while not webhooks.counts:
            await trio.sleep(0)
        nursery.cancel_scope.cancel()
    assert webhooks.counts == {"dropped": 1}


def test_a_server_with_no_webhook_loads_none_of_the_webhook_code() -> None:
    """In a process of its own: the test process has imported it all already."""
    check = (
        "import sys, callbox.__main__, callbox.server.app, callbox.server.cluster;"
        "loaded = {'httpx', 'standardwebhooks', 'callbox.server.webhooks'} & set(sys.modules);"
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", check], check=True, timeout=60)
