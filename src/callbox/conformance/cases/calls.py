"""1:1 calls and every way they end, glare, several devices per user, and the relay."""

from __future__ import annotations

from callbox.client import Client, ProtocolViolation
from callbox.conformance.context import CaseClient, Context
from callbox.conformance.registry import Skip, case
from callbox.conformance.steps import (
    CANDIDATE,
    SDP,
    answer,
    call,
    check,
    ended,
    incoming,
    is_ended,
    refused,
    relays,
    ring,
)
from callbox.messages import (
    CallAccepted,
    CallAnswer,
    CallEnded,
    CallIncoming,
    CallInvite,
    CallJoin,
    CallReject,
    CallRejected,
    CallRinging,
    Hangup,
    IceCandidate,
    Media,
    RelayedIceCandidate,
    RelayedSdpAnswer,
    RelayedSdpOffer,
    SdpAnswer,
    SdpOffer,
)

# 1:1 calls ----------------------------------------------------------------------------------------


@case("calls.lifecycle", "calls", covers=("end:hangup",))
async def lifecycle(ctx: Context) -> None:
    """A whole 1:1 call: ring (media and metadata passed on), answer, SDP and ICE both ways,
    hangup with a reason: both get call_ended hangup with by and detail."""
    alice, bob = await ctx.clients("alice", "bob")
    media, metadata = Media(audio=True, video=False), {"subject": "conformance", "n": 1}
    call_id = await alice.initiate([bob.user_id], media=media, metadata=metadata, rid="i")
    await alice.expect(CallRinging, call_id=call_id, to=[bob.user_id], rid="i")
    rung = await incoming(bob, call_id, alice)
    check(rung.media == media, f"call_incoming.media is {rung.media}, the caller sent {media}")
    check(rung.metadata == metadata, f"call_incoming.metadata is {rung.metadata}")
    await answer(bob, call_id, [alice])
    await bob.offer(call_id, alice.user_id, SDP)
    await alice.expect(RelayedSdpOffer, call_id=call_id, from_=bob.user_id, sdp=SDP)
    await alice.answer_sdp(call_id, bob.user_id, SDP)
    await bob.expect(RelayedSdpAnswer, call_id=call_id, from_=alice.user_id, sdp=SDP)
    for sender, receiver in ((alice, bob), (bob, alice)):
        for candidate in (CANDIDATE, None):
            await sender.candidate(call_id, receiver.user_id, candidate)
            await receiver.expect(
                RelayedIceCandidate, call_id=call_id, from_=sender.user_id, candidate=candidate
            )
    await alice.hangup(call_id, "normal", rid="h")
    await alice.expect(
        CallEnded, call_id=call_id, reason="hangup", by=alice.user_id, detail="normal", rid="h"
    )
    await ended([bob], call_id, "hangup", by=alice.user_id, detail="normal")


@case("calls.end.busy_in_call", "calls", covers=("end:busy",))
async def busy_in_call(ctx: Context) -> None:
    """Calling someone who is in a call ends the call busy; the busy users hear nothing."""
    alice, bob, carol = await ctx.clients("alice", "bob", "carol")
    await call(bob, carol)
    call_id = await alice.initiate([bob.user_id], rid="i")
    await alice.expect(CallRejected, call_id=call_id, by=bob.user_id, reason="busy", rid="i")
    await ended([alice], call_id, "busy", by=bob.user_id)


@case("calls.end.busy_rejected", "calls", covers=("end:busy",))
async def busy_rejected(ctx: Context) -> None:
    """call_reject with reason busy ends the call busy for both."""
    alice, bob = await ctx.clients("alice", "bob")
    call_id = await ring(alice, [bob])
    await bob.reject(call_id, "busy", rid="no")
    await bob.expect(CallEnded, call_id=call_id, reason="busy", by=bob.user_id, rid="no")
    await alice.expect(CallRejected, call_id=call_id, by=bob.user_id, reason="busy")
    await ended([alice], call_id, "busy", by=bob.user_id)


OFFLINE_RINGING_ON = "the server rings users whose app is closed: calls.offline_ringing.* apply"
OFFLINE_RINGING_OFF = (
    "the server does not ring users whose app is closed (offline ringing: a callee with no"
    " device is refused at once; callbox rings them with a webhook sending call.ringing_offline)"
)


async def call_nobody(ctx: Context, *, rings_offline: bool) -> tuple[CaseClient, str, str]:
    """alice calls a user with no connected device; `Skip` unless the server's answer is
    the one `rings_offline` expects: `call_ringing` naming them in `offline`, or `call_rejected`
    `offline` at once. Returns alice, the call and the user called."""
    alice = await ctx.client("alice")
    nobody = ctx.name("nobody")
    call_id = await alice.initiate([nobody], rid="i")
    first = await alice.receive()
    if not isinstance(first, CallRinging | CallRejected):
        raise ProtocolViolation(f"expected call_ringing or call_rejected, got {first.TYPE}")
    if isinstance(first, CallRinging) != rings_offline:
        raise Skip(OFFLINE_RINGING_OFF if rings_offline else OFFLINE_RINGING_ON)
    check(first.rid == "i", f"{first.TYPE} does not echo the rid: {first}")
    if isinstance(first, CallRinging):
        check(first.offline == [nobody], f"call_ringing.offline is {first.offline}, not [{nobody}]")
    else:
        check(first.reason == "offline" and first.by == nobody, f"got {first}")
    return alice, call_id, nobody


@case("calls.end.offline", "calls", covers=("end:offline",))
async def offline(ctx: Context) -> None:
    """Calling a user with no connected device ends the call offline at once (on a server
    that does not ring users whose app is closed)."""
    alice, call_id, nobody = await call_nobody(ctx, rings_offline=False)
    await ended([alice], call_id, "offline", by=nobody)


@case("calls.offline_ringing.answer", "calls")
async def offline_ringing_answer(ctx: Context) -> None:
    """On a server that rings users whose app is closed: the callee is named in
    call_ringing.offline; a device of theirs that connects during the ring gets call_incoming
    and answers."""
    alice, call_id, nobody = await call_nobody(ctx, rings_offline=True)
    callee = await ctx.client("nobody")
    check(callee.user_id == nobody, "the callee signs in as the user called")
    rung = await callee.expect(CallIncoming, call_id=call_id, from_=alice.user_id)
    check(0 < rung.expires_in_ms <= ctx.limits.ring_timeout_ms, f"expires_in_ms {rung}")
    await answer(callee, call_id, [alice])


@case("calls.offline_ringing.timeout", "calls")
async def offline_ringing_timeout(ctx: Context) -> None:
    """On a server that rings users whose app is closed: a callee none of whose devices comes
    drops out at the ring timeout with reason offline, not ring_timeout."""
    alice, call_id, nobody = await call_nobody(ctx, rings_offline=True)
    ctx.wait("ring_timeout_ms", ctx.limits.ring_timeout_ms)
    await alice.expect(CallRejected, call_id=call_id, by=nobody, reason="offline")
    await ended([alice], call_id, "offline", by=nobody)


@case("calls.end.disconnected", "calls", covers=("end:disconnected",))
async def disconnected(ctx: Context) -> None:
    """bye in a call ends it for the other side with disconnected."""
    alice, bob = await ctx.clients("alice", "bob")
    call_id = await call(alice, bob)
    await bob.bye()
    await ended([alice], call_id, "disconnected", by=bob.user_id)


@case("calls.after_end", "calls", covers=("error:invalid_state",))
async def after_end(ctx: Context) -> None:
    """Once a call has ended, every message about it is refused with invalid_state."""
    alice, bob = await ctx.clients("alice", "bob")
    call_id = await call(alice, bob)
    await bob.hangup(call_id)
    await ended([bob, alice], call_id, "hangup", by=bob.user_id)
    for client, peer in ((alice, bob), (bob, alice)):
        for request in (
            CallAnswer(call_id=call_id),
            CallReject(call_id=call_id, reason="declined"),
            CallJoin(call_id=call_id),
            CallInvite(call_id=call_id, to=[ctx.name("carol")]),
            Hangup(call_id=call_id),
            SdpOffer(call_id=call_id, to=peer.user_id, sdp=SDP),
            SdpAnswer(call_id=call_id, to=peer.user_id, sdp=SDP),
            IceCandidate(call_id=call_id, to=peer.user_id, candidate=None),
        ):
            await refused(client, "invalid_state", request)


@case("calls.end.error", "calls", covers=("end:error",))
async def ended_by_error(ctx: Context) -> None:
    """call_ended reason error means the server failed: no client can provoke it."""
    raise Skip("only a failing server ends a call with reason error; no client request can")


# Glare --------------------------------------------------------------------------------------------


async def glare(ctx: Context, *, existing_lesser: bool) -> None:
    """alice calls bob while bob calls alice: the lesser call_id survives, accepted by both;
    the other ends merged for whoever was involved in it."""
    alice, bob = await ctx.clients("alice", "bob")
    lesser, greater = ctx.name("a-call"), ctx.name("b-call")
    existing, new = (lesser, greater) if existing_lesser else (greater, lesser)
    await ring(alice, [bob], call_id=existing)
    await bob.initiate([alice.user_id], call_id=new, rid="glare")
    if existing_lesser:
        await bob.expect(CallEnded, call_id=new, reason="merged", rid="glare")
        joiner, caller = bob, alice
    else:
        await ended([alice, bob], existing, "merged")
        joiner, caller = alice, bob
    for client in (alice, bob):
        rid = "glare" if client is bob else None
        accepted = await client.expect(CallAccepted, call_id=lesser, by=joiner.user_id, rid=rid)
        check(
            sorted(accepted.participants) == sorted([alice.user_id, bob.user_id]),
            f"call_accepted.participants of the merged call is {accepted.participants}",
        )
    await relays(joiner, caller, lesser)
    if not existing_lesser:  # the losing call really existed: it is over for both
        await is_ended(alice, existing, bob)
        await is_ended(bob, existing, alice)


@case("glare.existing_call_lesser", "glare", covers=("end:merged",))
async def existing_call_lesser(ctx: Context) -> None:
    """Glare where the call already ringing has the lesser id: it survives, bob's ends merged."""
    await glare(ctx, existing_lesser=True)


@case("glare.new_call_lesser", "glare", covers=("end:merged",))
async def new_call_lesser(ctx: Context) -> None:
    """Glare where the crossing call has the lesser id: the ringing one ends merged for both
    and the new one is accepted by both."""
    await glare(ctx, existing_lesser=False)


# Several devices ----------------------------------------------------------------------------------


@case("devices.first_answer_wins", "devices", covers=("end:answered_elsewhere",))
async def first_answer_wins(ctx: Context) -> None:
    """Every device rings; the first to answer joins, the others get answered_elsewhere, and
    relays reach the device in the call only."""
    alice = await ctx.client("alice")
    phone, laptop = (
        await ctx.client("bob", device="phone"),
        await ctx.client("bob", device="laptop"),
    )
    call_id = await ring(alice, [phone, laptop])
    await answer(laptop, call_id, [alice])
    await phone.expect(CallEnded, call_id=call_id, reason="answered_elsewhere", by=phone.user_id)
    await relays(alice, laptop, call_id)
    await refused(phone, "invalid_state", CallAnswer(call_id=call_id))


@case("devices.late_device_rings", "devices")
async def late_device_rings(ctx: Context) -> None:
    """A device that connects while its user is rung rings too, and may answer."""
    alice, phone = await ctx.client("alice"), await ctx.client("bob", device="phone")
    call_id = await ring(alice, [phone])
    laptop = await ctx.client("bob", device="laptop")
    late = await incoming(laptop, call_id, alice)
    await answer(laptop, call_id, [alice])
    await phone.expect(CallEnded, call_id=call_id, reason="answered_elsewhere")
    check(late.expires_in_ms <= alice.limits.ring_timeout_ms, "late ring outlasts the timeout")


@case("devices.caller_hangup_stops_all", "devices")
async def caller_hangup_stops_all(ctx: Context) -> None:
    """The caller hanging up while ringing stops every device of the callee."""
    alice = await ctx.client("alice")
    devices = [await ctx.client("bob", device=name) for name in ("phone", "laptop")]
    call_id = await ring(alice, devices)
    await alice.hangup(call_id, rid="h")
    await alice.expect(CallEnded, call_id=call_id, reason="hangup", by=alice.user_id, rid="h")
    await ended(devices, call_id, "hangup", by=alice.user_id)


@case("devices.decline_stops_all", "devices")
async def decline_stops_all(ctx: Context) -> None:
    """One device declining ends the call on every device of the callee."""
    alice = await ctx.client("alice")
    phone, laptop = (
        await ctx.client("bob", device="phone"),
        await ctx.client("bob", device="laptop"),
    )
    call_id = await ring(alice, [phone, laptop])
    await phone.reject(call_id, rid="no")
    await phone.expect(CallEnded, call_id=call_id, reason="rejected", by=phone.user_id, rid="no")
    await ended([laptop], call_id, "rejected", by=phone.user_id)
    await alice.expect(CallRejected, call_id=call_id, by=phone.user_id, reason="declined")
    await ended([alice], call_id, "rejected", by=phone.user_id)


# Relay --------------------------------------------------------------------------------------------


async def active_call(ctx: Context) -> tuple[Client, Client, str]:
    alice, bob = await ctx.clients("alice", "bob")
    return alice, bob, await call(alice, bob)


@case("relay.in_order", "relay")
async def in_order(ctx: Context) -> None:
    """Relays arrive in the order they were sent, as sent: renegotiation is more of the same."""
    alice, bob, call_id = await active_call(ctx)
    for round_ in range(2):
        await bob.offer(call_id, alice.user_id, f"{SDP}a=round:{round_}\r\n")
        for n in range(10):
            await bob.candidate(call_id, alice.user_id, {"candidate": f"candidate:{n}"})
        await alice.expect(RelayedSdpOffer, sdp=f"{SDP}a=round:{round_}\r\n")
        for n in range(10):
            await alice.expect(RelayedIceCandidate, candidate={"candidate": f"candidate:{n}"})


@case("relay.not_in_call", "relay", covers=("error:not_in_call",))
async def not_in_call(ctx: Context) -> None:
    """A relay from outside the call, or to someone outside it or to oneself, is not_in_call."""
    alice, bob, call_id = await active_call(ctx)
    eve = await ctx.client("eve")
    offer = SdpOffer(call_id=call_id, to=bob.user_id, sdp=SDP)
    await refused(eve, "not_in_call", offer)
    await refused(
        alice,
        "not_in_call",
        IceCandidate(call_id=call_id, to=eve.user_id, candidate=None),
        path="/to",
    )
    await refused(
        alice, "not_in_call", SdpOffer(call_id=call_id, to=alice.user_id, sdp=SDP), path="/to"
    )
    await refused(eve, "not_in_call", Hangup(call_id=call_id))


@case("relay.unknown_call", "relay", covers=("error:unknown_call",))
async def unknown_call(ctx: Context) -> None:
    """Messages about a call that does not exist are unknown_call, pointing at call_id."""
    alice, bob = await ctx.clients("alice", "bob")
    call_id = ctx.name("no-call")
    for request in (
        SdpOffer(call_id=call_id, to=bob.user_id, sdp=SDP),
        CallAnswer(call_id=call_id),
        CallReject(call_id=call_id, reason="declined"),
        CallJoin(call_id=call_id),
        CallInvite(call_id=call_id, to=[bob.user_id]),
        Hangup(call_id=call_id),
    ):
        await refused(alice, "unknown_call", request, path="/call_id")


@case("relay.before_accept", "relay", covers=("error:invalid_state",))
async def before_accept(ctx: Context) -> None:
    """Relays before call_accepted are invalid_state, from the caller and from the callee."""
    alice, bob = await ctx.clients("alice", "bob")
    call_id = await ring(alice, [bob])
    await refused(alice, "invalid_state", SdpOffer(call_id=call_id, to=bob.user_id, sdp=SDP))
    await refused(bob, "invalid_state", SdpAnswer(call_id=call_id, to=alice.user_id, sdp=SDP))
    await answer(bob, call_id, [alice])
    await relays(bob, alice, call_id)
    await refused(alice, "invalid_state", CallAnswer(call_id=call_id))
