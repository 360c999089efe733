"""Rooms (membership, broadcasts, room calls) and presence."""

from __future__ import annotations

from typing import Any

from callbox.client import Client
from callbox.conformance.context import Context
from callbox.conformance.registry import case
from callbox.conformance.steps import (
    answer,
    check,
    drain,
    ended,
    enter_room,
    incoming,
    refused,
    relays,
    same_users,
)
from callbox.messages import (
    CallInitiate,
    CallJoin,
    CallRinging,
    Media,
    Presence,
    RoomBroadcast,
    RoomLeave,
    RoomLeft,
    RoomMemberLeft,
    RoomMessage,
    UserStatus,
)

DATA: list[Any] = [{"n": 1, "nested": {"ok": True}}, [1, "two", None], "text", 3.5, None, False]
"""`room_broadcast.data` is any JSON: each kind must come back as sent."""


# Rooms --------------------------------------------------------------------------------------------


@case("rooms.join_and_leave", "rooms")
async def join_and_leave(ctx: Context) -> None:
    """room_join answers room_joined with the members and tells them; room_leave answers
    room_left and tells them too."""
    alice, bob = await ctx.clients("alice", "bob")
    room = ctx.name("room")
    await enter_room(alice, room, [])
    await enter_room(bob, room, [alice])
    await bob.room_leave(room, rid="leave")
    await bob.expect(RoomLeft, room=room, rid="leave")
    await alice.expect(RoomMemberLeft, room=room, user_id=bob.user_id)


@case("rooms.devices", "rooms")
async def room_devices(ctx: Context) -> None:
    """A user's second device in a room is not a new member; the user leaves with its last."""
    alice = await ctx.client("alice")
    phone, laptop = (
        await ctx.client("bob", device="phone"),
        await ctx.client("bob", device="laptop"),
    )
    room = ctx.name("room")
    await enter_room(alice, room, [])
    await enter_room(phone, room, [alice])
    await enter_room(laptop, room, [alice, phone])
    for device in (phone, laptop):
        await device.room_leave(room)
        await device.expect(RoomLeft, room=room)
    await alice.expect(RoomMemberLeft, room=room, user_id=phone.user_id)


@case("rooms.broadcast", "rooms")
async def broadcast(ctx: Context) -> None:
    """room_broadcast reaches every other member's devices as room_message, from the sender,
    in send order, data as sent; the sender's own device gets nothing."""
    alice, bob, carol = await ctx.clients("alice", "bob", "carol")
    other_alice = await ctx.client("alice", device="other")
    room = ctx.name("room")
    await enter_room(alice, room, [])
    await enter_room(other_alice, room, [alice])
    await enter_room(bob, room, [alice, other_alice])
    await enter_room(carol, room, [alice, other_alice, bob])
    for data in DATA:
        await alice.room_broadcast(room, data)
    for client in (other_alice, bob, carol):
        for data in DATA:
            await client.expect(RoomMessage, room=room, from_=alice.user_id, data=data)


@case("rooms.call", "rooms", covers=("error:call_exists",))
async def room_call(ctx: Context) -> None:
    """A room call rings every other member; room_joined names it to later members, who may
    call_join it; a second room call is call_exists."""
    alice, bob, carol = await ctx.clients("alice", "bob", "carol")
    room = ctx.name("room")
    await enter_room(alice, room, [])
    await enter_room(bob, room, [alice])
    media = Media(audio=True, video=False)
    call_id = await alice.initiate(room=room, media=media, rid="i")
    await alice.expect(CallRinging, call_id=call_id, to=[bob.user_id], rid="i")
    await incoming(bob, call_id, alice)
    await answer(bob, call_id, [alice])
    await enter_room(carol, room, [alice, bob], call_id=call_id)
    await answer(carol, call_id, [alice, bob], join=True)
    await relays(carol, alice, call_id)
    again = CallInitiate(call_id=ctx.name("second"), room=room, media=media)
    await refused(bob, "call_exists", again, path="/room")


@case("rooms.outsider", "rooms", covers=("error:not_in_call", "error:not_in_room"))
async def outsider(ctx: Context) -> None:
    """Who is not in a room cannot join its call, broadcast to it, leave it or call it."""
    alice, bob, eve = await ctx.clients("alice", "bob", "eve")
    room = ctx.name("room")
    await enter_room(alice, room, [])
    await enter_room(bob, room, [alice])
    call_id = await alice.initiate(room=room, rid="i")
    await alice.expect(CallRinging, call_id=call_id, rid="i")
    await incoming(bob, call_id, alice)
    await refused(eve, "not_in_call", CallJoin(call_id=call_id))
    await refused(eve, "not_in_room", RoomBroadcast(room=room, data=1), path="/room")
    await refused(eve, "not_in_room", RoomLeave(room=room), path="/room")
    media = Media(audio=True, video=True)
    await refused(eve, "not_in_room", CallInitiate(call_id=ctx.name("c"), room=room, media=media))
    await alice.hangup(call_id)
    await ended([alice, bob], call_id, "hangup", by=alice.user_id)


@case("rooms.resume", "rooms")
async def resume(ctx: Context) -> None:
    """Membership outlives a lost connection: nobody is told, and broadcasts sent meanwhile are
    replayed on resume."""
    alice, bob = await ctx.clients("alice", "bob")
    room = ctx.name("room")
    await enter_room(alice, room, [])
    await enter_room(bob, room, [alice])
    await bob.drop()
    await alice.room_broadcast(room, "while away")
    await alice.ping()
    check((await bob.resume()).resumed, "resume within the grace period: resumed false")
    await bob.expect(RoomMessage, room=room, from_=alice.user_id, data="while away")


# Presence -----------------------------------------------------------------------------------------


async def watch(watcher: Client, watched: list[str]) -> list[Presence]:
    """Subscribes: one `presence` per user, each echoing the `rid`."""
    await watcher.presence_subscribe(watched, rid="watch")
    replies = [await watcher.expect(Presence, rid="watch") for _ in watched]
    same_users("presence replies", [p.user_id for p in replies], watched)
    return replies


async def sees(watcher: Client, *changes: tuple[Client | str, UserStatus]) -> list[Presence]:
    """The next presence messages are `changes`, in any order."""
    got = [await watcher.expect(Presence) for _ in changes]
    expected = sorted((w if isinstance(w, str) else w.user_id, s) for w, s in changes)
    check(
        sorted((p.user_id, p.status) for p in got) == expected,
        f"presence changes {[(p.user_id, p.status) for p in got]}, expected {expected}",
    )
    for presence in got:
        check(presence.last_seen is not None, f"presence {presence.status} without last_seen")
    return got


@case("presence.lifecycle", "presence", watches=("presence",))
async def presence_lifecycle(ctx: Context) -> None:
    """presence_subscribe answers each user's state (offline, never seen), then every change:
    online, away, in_call (caller at once, callee on answer), back, offline after bye."""
    watcher = await ctx.client("watcher")
    a_id, b_id = ctx.name("a"), ctx.name("b")
    for presence in await watch(watcher, [a_id, b_id]):
        check(
            (presence.status, presence.last_seen) == ("offline", None),
            f"a user never seen is {presence.status}, last_seen {presence.last_seen}",
        )
    a = await ctx.client("a")
    await sees(watcher, (a, "online"))
    b = await ctx.client("b")
    await sees(watcher, (b, "online"))
    await a.presence_set("away")
    await sees(watcher, (a, "away"))
    call_id = await a.initiate([b.user_id], rid="i")
    await a.expect(CallRinging, call_id=call_id, rid="i")
    await sees(watcher, (a, "in_call"))
    await incoming(b, call_id, a)
    await answer(b, call_id, [a])
    await sees(watcher, (b, "in_call"))
    await b.hangup(call_id)
    await ended([b, a], call_id, "hangup", by=b.user_id)
    await sees(watcher, (a, "away"), (b, "online"))
    await b.bye()
    await sees(watcher, (b, "offline"))


@case("presence.devices", "presence", watches=("presence",))
async def presence_devices(ctx: Context) -> None:
    """A user's status merges its devices: the most available one wins."""
    watcher = await ctx.client("watcher")
    await watch(watcher, [ctx.name("a")])
    phone = await ctx.client("a", device="phone")
    await sees(watcher, (phone, "online"))
    laptop = await ctx.client("a", device="laptop")
    await phone.presence_set("dnd")
    await laptop.presence_set("away")
    await sees(watcher, (phone, "away"))
    await laptop.bye()
    await sees(watcher, (phone, "dnd"))


@case("presence.unsubscribe", "presence", watches=("presence",))
async def unsubscribe(ctx: Context) -> None:
    """After presence_unsubscribe, changes are no longer sent."""
    watcher = await ctx.client("watcher")
    await watch(watcher, [ctx.name("a")])
    await watcher.presence_unsubscribe([ctx.name("a")])
    await watcher.ping()  # the unsubscribe is applied before a connects, wherever a does
    await ctx.client("a")
    await watcher.ping()


@case("presence.no_flap", "presence", watches=("presence",))
async def no_flap(ctx: Context) -> None:
    """A connection lost and resumed within the grace period is never shown offline."""
    watcher, a = await ctx.clients("watcher", "a")
    await watch(watcher, [a.user_id])
    await a.drop()
    check((await a.resume()).resumed, "resume within the grace period: resumed false")
    check(await drain(watcher) == [], "a watcher was told of a resumed connection")
