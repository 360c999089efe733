"""Every error code the server can be made to send, with `rid` echoed and the right `path`.

Codes owned by another case are covered there (see each case's `covers`); a test proves that
together they cover every code of `messages.ErrorCode`.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from callbox.client import Client, HelloRefused, ProtocolViolation
from callbox.conformance.context import MAX_CONNECTIONS_PER_CASE, Context
from callbox.conformance.registry import Skip, case
from callbox.conformance.steps import (
    Pacer,
    call,
    check,
    drain,
    enter_room,
    refused,
    ring,
    shown,
)
from callbox.messages import (
    CallInitiate,
    ClientMessage,
    Error,
    Hello,
    Media,
    Ping,
    Pong,
    Presence,
    PresenceSubscribe,
    RoomBroadcast,
    RoomJoin,
    RoomJoined,
    RoomMessage,
    Welcome,
)

MAX_FLOOD_MESSAGES = 2000
"""The most messages a case sends to reach a limit; a higher limit skips the case."""
FLOOD_MARGIN = 10
"""Messages a flood sends beyond what the rate limiter could take, so some must be refused."""
PRESENCE_BATCH = 100
"""`presence_subscribe.users` holds at most 100 users."""
MEDIA = Media(audio=True, video=True)


def _within_flood(count: int, what: str) -> int:
    if count > MAX_FLOOD_MESSAGES:
        raise Skip(f"{what} takes {count} messages, more than the suite sends")
    return count


@case("errors.auth_failed", "errors", covers=("error:auth_failed",))
async def auth_failed(ctx: Context) -> None:
    """A hello whose token cannot be verified gets auth_failed (no seq), then close 4001."""
    connection = await ctx.connection()
    await connection.send(Hello(token="not-a-jwt", rid="auth"))
    reply = await connection.receive()
    if isinstance(reply, Welcome):
        raise Skip("the server welcomed an unverifiable token: it trusts clients (dev mode)")
    check(
        isinstance(reply, Error)
        and (reply.code, reply.rid, reply.seq) == ("auth_failed", "auth", None),
        f"a hello with a bad token got {shown(reply)}, not error auth_failed",
    )
    code = await connection.wait_closed()
    check(code == 4001, f"after auth_failed the server closed with {code}, not 4001")


@case("errors.call_exists", "errors", covers=("error:call_exists",))
async def call_exists(ctx: Context) -> None:
    """A call_initiate reusing a running call's id is call_exists, pointing at call_id."""
    alice, bob, carol = await ctx.clients("alice", "bob", "carol")
    call_id = await ring(alice, [bob])
    reuse = CallInitiate(call_id=call_id, to=[ctx.name("dave")], media=MEDIA)
    await refused(carol, "call_exists", reuse, path="/call_id")


@case("errors.user_busy", "errors", covers=("error:user_busy",))
async def user_busy(ctx: Context) -> None:
    """A device in a call that starts another is user_busy."""
    alice, bob = await ctx.clients("alice", "bob")
    await call(alice, bob)
    another = CallInitiate(call_id=ctx.name("second"), to=[ctx.name("carol")], media=MEDIA)
    await refused(alice, "user_busy", another)


@case("errors.user_offline", "errors", covers=("error:user_offline",))
async def user_offline(ctx: Context) -> None:
    """A room call with nobody else in the room is user_offline, pointing at room."""
    alice = await ctx.client("alice")
    room = ctx.name("room")
    await enter_room(alice, room, [])
    alone = CallInitiate(call_id=ctx.name("call"), room=room, media=MEDIA)
    await refused(alice, "user_offline", alone, path="/room")


@case("errors.rate_limited", "errors", covers=("error:rate_limited",))
async def rate_limited(ctx: Context) -> str:
    """Messages beyond limits.message_burst (plus what the rate refills meanwhile) are
    refused, each with rate_limited and its rid, in order; the connection goes on."""
    alice = await ctx.client("alice")
    limits = alice.limits
    started = trio.current_time()
    count = await _flood(
        alice, lambda n: Ping(rid=f"f{n}"), limits.message_burst, limits.messages_per_second
    )
    limited = 0
    for n in range(count):
        reply = await alice.receive()
        limited += isinstance(reply, Error)
        check(
            isinstance(reply, Pong | Error)
            and reply.rid == f"f{n}"
            and (isinstance(reply, Pong) or reply.code == "rate_limited"),
            f"ping f{n} of a flood got {shown(reply)}",
        )
    elapsed = trio.current_time() - started
    rate = limits.messages_per_second
    _check_refused(limited, count, limits.message_burst, rate, elapsed)
    await trio.sleep(3 / rate)  # tokens for the next ping and the case's final one
    await alice.ping()
    return f"{limited} of {count} refused"


@case(
    "errors.broadcast_limits",
    "errors",
    covers=("error:message_too_large", "error:rate_limited"),
)
async def broadcast_limits(ctx: Context) -> str:
    """A room_broadcast whose data encodes to more than max_broadcast_bytes is
    message_too_large at /data (exactly the limit passes); broadcasts beyond twice
    broadcasts_per_second at once are rate_limited."""
    alice, bob = await ctx.clients("alice", "bob")
    limits = alice.limits
    if limits.max_broadcast_bytes + 200 > limits.max_message_bytes:
        raise Skip("max_broadcast_bytes does not fit in max_message_bytes")
    room = ctx.name("room")
    await enter_room(alice, room, [])
    await enter_room(bob, room, [alice])
    fits = "x" * (limits.max_broadcast_bytes - 2)  # with its quotes, exactly the limit
    await alice.room_broadcast(room, fits)
    await bob.expect(RoomMessage, from_=alice.user_id, data=fits)
    too_large = RoomBroadcast(room=room, data=fits + "x")
    await refused(alice, "message_too_large", too_large, path="/data")
    rate = limits.broadcasts_per_second
    burst = 2 * rate - 1  # one token was spent
    if burst + FLOOD_MARGIN > limits.message_burst // 2:
        raise Skip("broadcasts_per_second is too close to the message rate to exceed alone")
    started = trio.current_time()
    count = await _flood(
        alice,
        lambda n: RoomBroadcast(room=room, data=n, rid=f"b{n}"),
        burst,
        rate,
        most=limits.message_burst // 2,
    )
    refusals = await drain(alice)
    elapsed = trio.current_time() - started
    check(
        all(isinstance(m, Error) and m.code == "rate_limited" for m in refusals),
        f"a burst of broadcasts got {shown(*refusals)}",
    )
    _check_refused(len(refusals), count, burst, rate, elapsed)
    refused_rids = {m.rid for m in refusals if isinstance(m, Error)}
    # Awaited rather than drained with a ping: bob's node may not be the one that took them,
    # and bob's pong has no seq to order it after them.
    for n in range(count):
        if f"b{n}" not in refused_rids:
            await bob.expect(RoomMessage, from_=alice.user_id, data=n)
    return f"{len(refusals)} of {count} broadcasts refused"


async def _flood(
    client: Client,
    message: Callable[[int], ClientMessage],
    burst: int,
    rate: int,
    most: int = MAX_FLOOD_MESSAGES,
) -> int:
    """Sends `message(0)`, `message(1)`, ... until FLOOD_MARGIN more have gone than a bucket of
    `burst` refilled at `rate` a second since the first could take, and returns how many: a
    client slowed by a loaded machine sends more rather than fall behind the refill. More than
    `most` skips the case."""
    started = trio.current_time()
    sent = 0
    while sent < burst + rate * (trio.current_time() - started) + FLOOD_MARGIN:
        if sent == most:
            raise Skip(f"exceeding a burst of {burst} at {rate}/s takes more than {most} messages")
        await client.send(message(sent))
        sent += 1
    return sent


def _check_refused(refused: int, sent: int, burst: int, rate: int, elapsed: float) -> None:
    """Some of `sent` messages must have been refused, unless the server may have received them
    over so long (`elapsed`, from the first sent to the last answered) that a bucket of `burst`
    refilled at `rate` a second could take them all (a loaded machine)."""
    if refused:
        return
    if burst + rate * elapsed < sent:
        raise ProtocolViolation(f"{sent} messages in {elapsed:.2f} s, none refused: rate_limited")
    raise Skip(f"sending {sent} messages took {elapsed:.2f} s: too slow to outpace the rate")


@case("errors.session_limit", "errors", covers=("error:session_limit",))
async def session_limit(ctx: Context) -> str:
    """Sessions of one user beyond the server's limit are refused with session_limit."""
    for n in range(MAX_CONNECTIONS_PER_CASE):
        try:
            await ctx.client("alice", device=f"d{n}")
        except HelloRefused as refusal:
            check(
                (refusal.error.code, refusal.error.seq) == ("session_limit", None),
                f"session {n + 1} of one user got {shown(refusal.error)}",
            )
            return f"session {n + 1} refused"
    raise Skip(f"the server allowed {MAX_CONNECTIONS_PER_CASE} sessions of one user")


@case("errors.room_full", "errors", covers=("error:room_full",))
async def room_full(ctx: Context) -> None:
    """A user joining a room of max_room_members users gets room_full, pointing at room."""
    most = ctx.limits.max_room_members
    ctx.need_connections(most + 1, f"filling a room of {most}")
    room, members = ctx.name("room"), list[Client]()
    for n in range(most):
        member = await ctx.client(f"u{n}")
        await enter_room(member, room, members)
        members.append(member)
    extra = await ctx.client("extra")
    await refused(extra, "room_full", RoomJoin(room=room), path="/room")


@case("errors.limit_reached.rooms", "errors", covers=("error:limit_reached",))
async def too_many_rooms(ctx: Context) -> None:
    """A session joining more than max_rooms_per_session rooms gets limit_reached at /room."""
    alice = await ctx.client("alice")
    most = _within_flood(alice.limits.max_rooms_per_session, "max_rooms_per_session")
    pacer = Pacer(alice.limits)
    for n in range(most):
        await pacer.tick()
        await alice.room_join(ctx.name(f"room{n}"))
        await alice.expect(RoomJoined, room=ctx.name(f"room{n}"))
    await pacer.tick()
    await refused(alice, "limit_reached", RoomJoin(room=ctx.name("one-more")), path="/room")


@case(
    "errors.limit_reached.presence",
    "errors",
    covers=("error:limit_reached",),
    watches=("presence",),
)
async def too_many_watched(ctx: Context) -> None:
    """Watching more than max_presence_subscriptions users gets limit_reached at /users."""
    alice = await ctx.client("alice")
    most = _within_flood(alice.limits.max_presence_subscriptions, "max_presence_subscriptions")
    watched = [ctx.name(f"u{n}") for n in range(most)]
    for start in range(0, most, PRESENCE_BATCH):
        batch = watched[start : start + PRESENCE_BATCH]
        await alice.presence_subscribe(batch)
        for user_id in batch:
            await alice.expect(Presence, user_id=user_id, status="offline")
    more = PresenceSubscribe(users=[ctx.name("one-more")])
    await refused(alice, "limit_reached", more, path="/users")


@case("errors.internal", "errors", covers=("error:internal",))
async def internal_failure(ctx: Context) -> None:
    """error internal means the server failed while handling a message: no client can provoke
    it (tests/core/test_internal_errors.py forces one in each of our server's handlers)."""
    raise Skip("only a failing server answers internal; no valid or invalid request can")


@case("errors.unavailable", "errors", covers=("error:unavailable",))
async def store_unavailable(ctx: Context) -> None:
    """error unavailable means a node of a cluster could not reach the store it shares with
    the others in time, and applied nothing: no client can provoke it (tests/cluster/
    test_shell.py takes a node's store away and checks the answer, and the 1013 a hello gets)."""
    raise Skip("only a cluster node whose store is out of reach answers unavailable")
