"""Group calls, rooms and presence over real WebSockets; every timeout under MockClock."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio
import trio.testing
from trio_websocket import open_websocket_url

from tests.helpers import start_server

from .wsclient import Client, connect

MEDIA = {"audio": True, "video": True}


async def everyone(stack: AsyncExitStack, url: str, *users: str) -> list[Client]:
    return [await stack.enter_async_context(connect(url, user)) for user in users]


async def answer(client: Client, call_id: str, *already_in: Client) -> dict[str, Any]:
    """`client` answers; returns its call_accepted after checking everyone already in was told."""
    await client.expect("call_incoming", call_id=call_id)
    await client.send({"type": "call_answer", "call_id": call_id})
    accepted = await client.expect("call_accepted", by=client.welcome["user_id"])
    for member in already_in:
        await member.expect("call_accepted", by=client.welcome["user_id"])
        if len(already_in) > 1:
            await member.expect("participant_joined", user_id=client.welcome["user_id"])
    return accepted


async def b_answers_a_call_to_b_and_c(stack: AsyncExitStack, url: str) -> list[Client]:
    """a rings b and c; b answers, c is still ringing. Returns [a, b, c]."""
    a, b, c = await everyone(stack, url, "a", "b", "c")
    call = {"type": "call_initiate", "call_id": "mesh-0001", "to": ["b", "c"], "media": MEDIA}
    await a.send(call)
    await a.expect("call_ringing")
    await answer(b, "mesh-0001", a)
    return [a, b, c]


async def test_four_party_call_with_a_leave_and_a_late_join(nursery: trio.Nursery) -> None:
    url = await start_server(nursery)
    async with AsyncExitStack() as stack:
        a, b, c, d, e = await everyone(stack, url, "a", "b", "c", "d", "e")
        await a.send(
            {"type": "call_initiate", "call_id": "mesh-0001", "to": ["b", "c", "d"], "media": MEDIA}
        )
        await a.expect("call_ringing", to=["b", "c", "d"])
        await answer(b, "mesh-0001", a)
        await answer(c, "mesh-0001", a, b)
        accepted = await answer(d, "mesh-0001", a, b, c)
        assert accepted["participants"] == ["a", "b", "c", "d"]
        for peer in ("a", "b", "c"):  # the newcomer offers to everyone already in
            await d.send({"type": "sdp_offer", "call_id": "mesh-0001", "to": peer, "sdp": "v=0 d"})
        for client in (a, b, c):
            offer = await client.expect("sdp_offer", sdp="v=0 d")
            assert offer["from"] == "d"
        await b.send({"type": "hangup", "call_id": "mesh-0001"})
        await b.expect("call_ended", reason="hangup", by="b")
        for client in (a, c, d):
            await client.expect("participant_left", user_id="b", reason="hangup")
        await a.send({"type": "call_invite", "call_id": "mesh-0001", "to": ["e"]})
        await a.expect("call_ringing", to=["e"])
        late = await answer(e, "mesh-0001", a, c, d)
        assert late["participants"] == ["a", "c", "d", "e"]


async def test_one_invitee_times_out_alone(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    url = await start_server(nursery)
    async with AsyncExitStack() as stack:
        a, b, c = await b_answers_a_call_to_b_and_c(stack, url)
        await c.expect("call_incoming")
        await c.expect("call_ended", reason="ring_timeout")
        await a.expect("call_rejected", by="c", reason="ring_timeout")
        await b.expect("call_rejected", by="c", reason="ring_timeout")
        await a.send({"type": "sdp_offer", "call_id": "mesh-0001", "to": "b", "sdp": "v=0 still"})
        await b.expect("sdp_offer", sdp="v=0 still")


async def test_call_full(nursery: trio.Nursery) -> None:
    url = await start_server(nursery, max_participants=3)
    async with AsyncExitStack() as stack:
        a, b, c, d = await everyone(stack, url, "a", "b", "c", "d")
        many = {"type": "call_initiate", "call_id": "mesh-0001", "media": MEDIA, "rid": "r"}
        await a.send({**many, "to": ["b", "c", "d"]})
        await a.expect("error", code="call_full", rid="r")
        await a.send({**many, "to": ["b", "c"]})
        await a.expect("call_ringing")
        await answer(b, "mesh-0001", a)
        await answer(c, "mesh-0001", a, b)
        await a.send({"type": "call_invite", "call_id": "mesh-0001", "to": ["d"], "rid": "more"})
        await a.expect("error", code="call_full", rid="more")
        del d


async def test_the_cap_ends_a_group_call(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    url = await start_server(nursery)
    async with AsyncExitStack() as stack:
        a, b, c = await b_answers_a_call_to_b_and_c(stack, url)
        started = trio.current_time()
        await answer(c, "mesh-0001", a, b)
        for client in (a, b, c):
            await client.expect("call_expiring", ends_in_ms=60_000)
        for client in (a, b, c):
            await client.expect("call_ended", reason="max_duration")
        assert trio.current_time() - started == pytest.approx(3600, abs=1)


async def test_room_broadcasts_arrive_in_send_order(nursery: trio.Nursery) -> None:
    url = await start_server(nursery, broadcasts_per_second=1000)
    async with AsyncExitStack() as stack:
        a, b, c = await everyone(stack, url, "a", "b", "c")
        await a.send({"type": "room_join", "room": "lobby"})
        await a.expect("room_joined", members=["a"])
        for n, client in enumerate((b, c), start=2):
            await client.send({"type": "room_join", "room": "lobby"})
            await client.expect("room_joined", members=["a", "b", "c"][:n])
        await a.expect("room_member_joined", user_id="b")
        await a.expect("room_member_joined", user_id="c")
        await b.expect("room_member_joined", user_id="c")
        for n in range(100):
            await a.send({"type": "room_broadcast", "room": "lobby", "data": {"n": n}})
        for client in (b, c):
            for n in range(100):
                message = await client.expect("room_message", data={"n": n})
                assert message["from"] == "a"


async def test_presence_lifecycle_without_an_offline_flap_on_resume(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    url = await start_server(nursery)
    async with connect(url, "watcher") as watcher:
        await watcher.send({"type": "presence_subscribe", "users": ["alice"], "rid": "s"})
        await watcher.expect("presence", user_id="alice", status="offline", last_seen=None, rid="s")
        async with connect(url, "alice") as alice:
            await watcher.expect("presence", status="online")
            await alice.send({"type": "presence_set", "status": "dnd"})
            await watcher.expect("presence", status="dnd")
            token, last_seq = alice.welcome["resume_token"], alice.last_seq
        await trio.sleep(5)  # alice's connection is gone; her session is in its grace period
        async with open_websocket_url(url) as ws:
            alice = Client(ws)
            await alice.hello("alice", resume=token, last_seq=last_seq)
            assert alice.welcome["resumed"] is True
            await trio.sleep(60)
            await alice.send({"type": "bye"})
        gone = await watcher.expect("presence", status="offline")  # not a flap: the first since dnd
        assert isinstance(gone["last_seen"], int)
