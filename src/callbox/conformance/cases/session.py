"""Connections and sessions: hello and welcome, numbering, bye, and resuming with replay."""

from __future__ import annotations

from contextlib import suppress

import attrs

from callbox.client import Client, ConnectionClosed
from callbox.conformance.admin import segment
from callbox.conformance.context import Context
from callbox.conformance.registry import Skip, case
from callbox.conformance.steps import (
    CANDIDATE,
    SDP,
    Pacer,
    answer,
    call,
    check,
    drain,
    ended,
    incoming,
    refused,
    shown,
)
from callbox.messages import (
    Ack,
    CallAccepted,
    CallEnded,
    CallRinging,
    Error,
    Hangup,
    Hello,
    IceCandidate,
    Ping,
    RelayedIceCandidate,
    RelayedSdpAnswer,
    RelayedSdpOffer,
    Welcome,
)

MAX_FRAME_PROBE_BYTES = 8 * 1024 * 1024
"""The largest frame the suite sends to prove `max_message_bytes` is enforced."""
HISTORY_PROBE_MESSAGES = 1024
"""The most messages the suite queues for an absent session to outgrow its replay history."""


# Connection ---------------------------------------------------------------------------------------


@case("connection.welcome", "connection")
async def welcome(ctx: Context) -> None:
    """hello gets welcome (rid echoed, no seq); then session messages count from 1, pong aside."""
    connection = await ctx.connection()
    hello = Hello(user_id=ctx.name("alice"), device_id="desk", rid="hello")
    await connection.send(hello)
    welcome = await connection.expect(Welcome, user_id=hello.user_id, resumed=False, rid="hello")
    check(welcome.session_id != welcome.resume_token, "welcome: session_id is the resume_token")
    alice = Client(connection, hello, welcome)
    await refused(alice, "unknown_call", Hangup(call_id=ctx.name("nowhere")))
    await alice.ping(ts=1.5)
    await refused(alice, "unknown_call", Hangup(call_id=ctx.name("nowhere")))
    check(alice.last_seq == 2, f"seq after two session messages is {alice.last_seq}, not 2")


@case("connection.ping", "connection")
async def ping(ctx: Context) -> None:
    """ping gets pong echoing ts and rid, without seq, however often."""
    alice = await ctx.client("alice")
    await alice.ping(ts=1_700_000_000_123, rid="p1")
    await alice.ping()
    await alice.ping(ts=-2.5)


@case("connection.not_authenticated", "connection", covers=("error:not_authenticated",))
async def not_authenticated(ctx: Context) -> None:
    """Anything but hello before welcome gets not_authenticated (no seq); hello still works."""
    connection = await ctx.connection()
    for early in (Ping(rid="early"), Hangup(call_id=ctx.name("call"), rid="early")):
        await connection.send(early)
        error = await connection.expect(Error, code="not_authenticated", rid="early")
        check(error.seq is None, "an error before welcome carries seq")
    await connection.send(Hello(user_id=ctx.name("alice")))
    await connection.expect(Welcome, resumed=False)


@case("connection.invalid_hello", "connection")
async def invalid_hello(ctx: Context) -> None:
    """A hello breaking its schema gets invalid_message without seq; a good one then works."""
    connection = await ctx.connection()
    await connection.send_frame('{"type": "hello", "rid": "h"}')
    error = await connection.expect(Error, code="invalid_message", rid="h")
    check(error.seq is None, "an error before welcome carries seq")
    await connection.send(Hello(user_id=ctx.name("alice")))
    await connection.expect(Welcome, resumed=False)


@case("connection.second_hello", "connection", covers=("error:invalid_state",))
async def second_hello(ctx: Context) -> None:
    """A second hello on a session is refused with invalid_state."""
    alice = await ctx.client("alice")
    await refused(alice, "invalid_state", Hello(user_id=alice.user_id))


@case("connection.bye", "connection")
async def bye(ctx: Context) -> None:
    """bye ends the session: the server closes with 1000."""
    alice = await ctx.client("alice")
    code = await alice.bye()
    check(code == 1000, f"the server closed with {code} after bye, not 1000")


@case("connection.binary_frame", "connection", covers=("error:invalid_message",))
async def binary_frame(ctx: Context) -> None:
    """A binary frame is refused with invalid_message; the connection goes on."""
    alice = await ctx.client("alice")
    await alice.connection.send_frame(b'{"type": "ping"}')
    await alice.expect(Error, code="invalid_message")
    await alice.ping()


@case("connection.oversize_frame", "connection", covers=("error:message_too_large",))
async def oversize_frame(ctx: Context) -> None:
    """A frame over limits.max_message_bytes closes the connection with 1009."""
    alice = await ctx.client("alice")
    size = alice.limits.max_message_bytes + 1
    if size > MAX_FRAME_PROBE_BYTES:
        raise Skip(f"max_message_bytes is {size - 1}, larger than the suite sends")
    with suppress(ConnectionClosed):  # the server may close before the frame is all sent
        await alice.connection.send_frame('{"type": "ping", "rid": "' + "x" * size + '"}')
    code = await alice.connection.wait_closed()
    check(code == 1009, f"the server closed with {code} after an oversize frame, not 1009")


# Resume -------------------------------------------------------------------------------------------


async def absent_callee(ctx: Context) -> tuple[Client, Client, str]:
    """alice and bob in a call, and bob's connection lost."""
    alice, bob = await ctx.clients("alice", "bob")
    call_id = await call(alice, bob)
    await bob.drop()
    return alice, bob, call_id


@case("resume.replay", "resume")
async def replay(ctx: Context) -> None:
    """Resuming replays every message after last_seq, with its seq; the call goes on."""
    alice, bob, call_id = await absent_callee(ctx)
    await alice.offer(call_id, bob.user_id, SDP)
    await alice.candidate(call_id, bob.user_id, CANDIDATE)
    await alice.ping()  # the server has handled both
    token = bob.welcome.resume_token
    welcome = await bob.resume(last_seq=bob.last_seq - 1)  # claims one message too few
    check(welcome.resumed, "resume within the grace period: welcome says resumed false")
    check(welcome.resume_token != token, "a resumed welcome repeats the old resume_token")
    await bob.expect(CallAccepted, call_id=call_id, by=bob.user_id)
    await bob.expect(RelayedSdpOffer, call_id=call_id, from_=alice.user_id, sdp=SDP)
    await bob.expect(RelayedIceCandidate, call_id=call_id, candidate=CANDIDATE)
    await bob.answer_sdp(call_id, alice.user_id, SDP)
    await alice.expect(RelayedSdpAnswer, call_id=call_id, from_=bob.user_id)


@case("resume.rung_while_away", "resume")
async def rung_while_away(ctx: Context) -> None:
    """A session in its grace period is rung (not offline); resuming replays call_incoming."""
    alice, bob = await ctx.clients("alice", "bob")
    await bob.drop()
    call_id = await alice.initiate([bob.user_id], rid="initiate")
    await alice.expect(CallRinging, call_id=call_id, to=[bob.user_id], rid="initiate")
    await alice.ping()
    check((await bob.resume()).resumed, "resume within the grace period: resumed false")
    await incoming(bob, call_id, alice)
    await answer(bob, call_id, [alice])


@case("resume.after_much_traffic", "resume")
async def after_much_traffic(ctx: Context) -> str:
    """A session that has received and read more than the replay history holds still resumes
    after a short absence, with nothing lost: what it had read makes room for what it missed."""
    count = ctx.limits.replay_buffer_messages + 2
    if count > HISTORY_PROBE_MESSAGES:
        raise Skip(f"replay_buffer_messages is {count - 2}, more than the suite sends")
    pacing_ms = round(count / ctx.limits.messages_per_second * 1000)
    ctx.call_lasts(f"pacing {count} messages", pacing_ms)
    ctx.wait("pacing the messages", pacing_ms)
    alice, bob = await ctx.clients("alice", "bob")
    call_id = await call(alice, bob)
    pacer = Pacer(alice.limits)
    for n in range(count):
        await pacer.tick()
        await alice.candidate(call_id, bob.user_id, {"candidate": f"candidate:{n}"})
    for n in range(count):
        await bob.expect(RelayedIceCandidate, candidate={"candidate": f"candidate:{n}"})
    await bob.drop()
    await alice.offer(call_id, bob.user_id, SDP)
    await alice.ping()  # the server has handled the offer
    check((await bob.resume()).resumed, "resume after a long call's traffic: resumed false")
    await bob.expect(RelayedSdpOffer, call_id=call_id, from_=alice.user_id, sdp=SDP)
    return f"{count} messages read before the absence"


@case("resume.lost_welcome", "resume")
async def lost_welcome(ctx: Context) -> None:
    """When the welcome of a resume is lost, the token the client still holds resumes the
    session once more, and nothing is lost."""
    alice, bob, call_id = await absent_callee(ctx)
    held, last_seq = bob.welcome.resume_token, bob.last_seq
    check((await bob.resume()).resumed, "resume within the grace period: resumed false")
    await bob.drop()  # as if that welcome, and its new resume_token, never arrived
    await alice.offer(call_id, bob.user_id, SDP)
    await alice.ping()
    welcome = await bob.resume(last_seq=last_seq, token=held)
    check(welcome.resumed, "resume with the token held before a lost welcome: resumed false")
    await bob.expect(RelayedSdpOffer, call_id=call_id, from_=alice.user_id, sdp=SDP)


@case("resume.ack", "resume")
async def ack(ctx: Context) -> None:
    """ack gets no reply, and one ahead of the last seq gets invalid_state; a resume after
    acknowledged messages replays what followed them."""
    alice, bob = await ctx.clients("alice", "bob")
    call_id = await call(alice, bob)
    await alice.offer(call_id, bob.user_id, SDP)
    await bob.expect(RelayedSdpOffer, call_id=call_id, sdp=SDP)
    await bob.ack()
    await refused(bob, "invalid_state", Ack(last_seq=bob.last_seq + 5), path="/last_seq")
    await bob.drop()
    await alice.candidate(call_id, bob.user_id, CANDIDATE)
    await alice.ping()
    check((await bob.resume()).resumed, "resume after an ack: resumed false")
    await bob.expect(RelayedIceCandidate, call_id=call_id, candidate=CANDIDATE)


@case("resume.cseq", "resume")
async def numbered(ctx: Context) -> None:
    """A client message numbered (`cseq`) is applied once: sent again, it is ignored without a
    reply; the resumed `welcome` says the last number applied (`last_cseq`)."""
    alice, bob = await ctx.clients("alice", "bob")
    call_id = await call(alice, bob)
    candidate = IceCandidate(call_id=call_id, to=bob.user_id, candidate=CANDIDATE)
    await alice.send(candidate)  # the client numbers it
    await bob.expect(RelayedIceCandidate, call_id=call_id, candidate=CANDIDATE)
    await alice.send(attrs.evolve(candidate, cseq=alice.last_cseq))  # the same number again
    await alice.ping()  # the server has handled the repeat...
    await bob.ping()  # ...and sent bob nothing for it: the pong comes next
    await alice.drop()
    welcome = await alice.resume()
    check(welcome.resumed, "resume within the grace period: resumed false")
    check(
        welcome.last_cseq == alice.last_cseq,
        f"welcome.last_cseq {welcome.last_cseq}: the last cseq applied was {alice.last_cseq}",
    )


@case("resume.takeover", "resume")
async def takeover(ctx: Context) -> None:
    """Resuming while the old connection is open closes that one with 4002."""
    bob = await ctx.client("bob")
    old = bob.connection
    check((await bob.resume()).resumed, "resume of an open session: resumed false")
    code = await old.wait_closed()
    check(code == 4002, f"the taken-over connection was closed with {code}, not 4002")
    await bob.ping()


@case("resume.terminated", "resume", covers=("end:terminated",))
async def terminated_by_the_deployer(ctx: Context) -> None:
    """The deployer removes a user's sessions (admin API): its connection is closed with 4004,
    the other party's call ends terminated by it, and its old token resumes nothing."""
    alice, bob = await ctx.clients("alice", "bob")
    call_id = await call(alice, bob)
    old = bob.connection
    status = await ctx.admin("DELETE", f"/api/v1/users/{segment(bob.user_id)}/sessions")
    check(status == 204, f"DELETE of {bob.user_id}'s sessions answered {status}, not 204")
    await ended([alice], call_id, "terminated", by=bob.user_id)
    code = await old.wait_closed()
    check(code == 4004, f"the removed user's connection was closed with {code}, not 4004")
    welcome = await bob.resume()
    check(not welcome.resumed, "a resume after 4004: welcome says resumed true")


@case("resume.last_seq_ahead", "resume")
async def last_seq_ahead(ctx: Context) -> None:
    """A last_seq ahead of the server gets resumed false; the old session ends as if it left."""
    alice, bob, call_id = await absent_callee(ctx)
    session = bob.welcome.session_id
    welcome = await bob.resume(last_seq=bob.last_seq + 5)
    check(not welcome.resumed, "resume claiming unsent messages: welcome says resumed true")
    check(welcome.session_id != session, "resumed false, yet the session id is the old one")
    await ended([alice], call_id, "disconnected", by=bob.user_id)


@case("resume.after_bye", "resume")
async def after_bye(ctx: Context) -> None:
    """A session ended with bye cannot be resumed."""
    bob = await ctx.client("bob")
    await bob.bye()
    check(not (await bob.resume()).resumed, "resume after bye: welcome says resumed true")


@case("resume.unknown_token", "resume")
async def unknown_token(ctx: Context) -> None:
    """An unknown resume token gets a new session (resumed false)."""
    connection = await ctx.connection()
    await connection.send(Hello(user_id=ctx.name("bob"), resume="no-such-token", last_seq=0))
    await connection.expect(Welcome, resumed=False)


@case("resume.other_user", "resume")
async def other_user(ctx: Context) -> None:
    """Another user's resume token gets a new session of one's own; the owner is undisturbed."""
    bob = await ctx.client("bob")
    connection = await ctx.connection()
    eve = ctx.name("eve")
    await connection.send(Hello(user_id=eve, resume=bob.welcome.resume_token, last_seq=0))
    await connection.expect(Welcome, user_id=eve, resumed=False)
    await bob.ping()


@case("resume.history_gone", "resume")
async def history_gone(ctx: Context) -> str:
    """When more was sent to an absent session than the server keeps, resuming says resumed
    false (never a partial replay) and the old session ends."""
    limits = ctx.limits
    outgrow = limits.replay_buffer_messages + 1
    ctx.call_lasts(
        f"outgrowing the replay history ({outgrow} messages)",
        round(outgrow / limits.messages_per_second * 1000),
    )
    alice, bob, call_id = await absent_callee(ctx)
    budget = min(
        HISTORY_PROBE_MESSAGES,
        limits.message_burst // 2 + int(limits.messages_per_second * 0.8 * ctx.options.max_wait),
    )
    ctx.wait("outgrowing the replay history", round(budget / limits.messages_per_second * 1000))
    pacer, sent, gone = Pacer(limits), 0, False
    while sent < budget and not gone:
        for _ in range(pacer.allowance):
            await pacer.tick()
            await alice.candidate(call_id, bob.user_id, {"candidate": f"candidate:{sent}"})
            sent += 1
        await pacer.tick()
        gone = await _ended_while_flooding(alice, call_id, bob)
    welcome = await bob.resume()
    if welcome.resumed:
        for n in range(sent):
            await bob.expect(RelayedIceCandidate, candidate={"candidate": f"candidate:{n}"})
        raise Skip(f"the server still held all {sent} messages sent to the absent session")
    if not gone:
        await ended([alice], call_id, "disconnected", by=bob.user_id)
    return f"history outgrown after at most {sent} messages"


async def _ended_while_flooding(alice: Client, call_id: str, bob: Client) -> bool:
    """Whether bob's session has ended, from what alice got: the call's end (disconnected),
    then refusals of the relays that followed it, and nothing else."""
    over = False
    for message in await drain(alice):
        if over:
            expected = isinstance(message, Error) and message.code == "invalid_state"
        else:
            expected = isinstance(message, CallEnded) and (
                message.call_id,
                message.reason,
                message.by,
            ) == (call_id, "disconnected", bob.user_id)
        check(expected, f"while flooding an absent session, alice got {shown(message)}")
        over = True
    return over
