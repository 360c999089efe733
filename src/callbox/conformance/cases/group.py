"""Group calls: a mesh on the same state machine, and max_participants."""

from __future__ import annotations

from callbox.conformance.context import CaseClient, Context
from callbox.conformance.registry import Skip, case
from callbox.conformance.steps import answer, call, check, invite, refused, relays, ring, shown
from callbox.messages import (
    CallEnded,
    CallInitiate,
    CallInvite,
    CallRejected,
    Error,
    Media,
    ParticipantLeft,
)

MAX_RECIPIENTS = 63
"""`recipients` in the schemas holds at most 63 users."""


@case("group.ring_and_grow", "group")
async def ring_and_grow(ctx: Context) -> None:
    """A group call rings everyone; it grows as they answer or join, the newcomer's offers
    reach everyone already in, and a decline drops out alone."""
    alice, bob, carol, dave = await ctx.clients("alice", "bob", "carol", "dave")
    call_id = await ring(alice, [bob, carol, dave])
    await answer(bob, call_id, [alice])
    await answer(carol, call_id, [alice, bob], join=True)
    for peer in (alice, bob):
        await relays(carol, peer, call_id)
    await dave.reject(call_id, rid="no")
    await dave.expect(CallEnded, call_id=call_id, reason="rejected", by=dave.user_id, rid="no")
    for client in (alice, bob, carol):
        await client.expect(CallRejected, call_id=call_id, by=dave.user_id, reason="declined")


@case("group.disconnected", "group")
async def disconnected(ctx: Context) -> None:
    """A participant whose session ends (bye) leaves alone: participant_left disconnected."""
    alice, bob, carol = await ctx.clients("alice", "bob", "carol")
    call_id = await call(alice, bob, carol)
    await carol.bye()
    for client in (alice, bob):
        await client.expect(
            ParticipantLeft, call_id=call_id, user_id=carol.user_id, reason="disconnected"
        )
    await relays(alice, bob, call_id)


@case("group.invite_twice", "group", covers=("error:invalid_state",))
async def invite_twice(ctx: Context) -> None:
    """Inviting someone who is already in the call is invalid_state, pointing at them."""
    alice, bob = await ctx.clients("alice", "bob")
    call_id = await call(alice, bob)
    request = CallInvite(call_id=call_id, to=[ctx.name("carol"), bob.user_id])
    await refused(alice, "invalid_state", request, path="/to/1")


def _max_participants(ctx: Context) -> int:
    most = ctx.limits.max_participants
    if not 2 <= most <= MAX_RECIPIENTS:
        raise Skip(f"max_participants is {most}: no call can fill it and stay valid")
    return most


@case("group.call_full.refused", "group", covers=("error:call_full",))
async def call_full_refused(ctx: Context) -> None:
    """A call_initiate or call_invite that could never fit max_participants is call_full."""
    most = _max_participants(ctx)
    alice, bob = await ctx.clients("alice", "bob")
    crowd = [ctx.name(f"u{n}") for n in range(most)]
    media = Media(audio=True, video=True)
    initiate = CallInitiate(call_id=ctx.name("too-big"), to=crowd, media=media)
    await refused(alice, "call_full", initiate, path="/to")
    call_id = await call(alice, bob)
    await refused(alice, "call_full", CallInvite(call_id=call_id, to=crowd[1:]), path="/to")


@case("group.call_full.answer", "group", covers=("error:call_full", "end:call_full"))
async def call_full_answer(ctx: Context) -> None:
    """An answer that would exceed max_participants gets error call_full and call_ended
    call_full; the others are told call_rejected call_full."""
    most = _max_participants(ctx)
    ctx.need_connections(most + 1, f"filling a call of {most}")
    alice, late, last = await ctx.clients("alice", "late", "last")
    fillers = await ctx.clients(*(f"u{n}" for n in range(most - 2)))
    call_id: str | None = None

    async def rung(devices: list[CaseClient]) -> str:
        """The call rings `devices`: its first ring, then invitations into it."""
        if call_id is None:
            return await ring(alice, devices)
        await invite(alice, call_id, devices, alice)
        return call_id

    # Each is rung just before it answers, so that no ring has to last while the whole call
    # fills up: with a ring timeout of 1 s, answering seven in turn took longer than that on
    # three nodes of a cluster, each answer a round of commits and wake-ups.
    joined: list[CaseClient] = [alice]
    for filler in fillers:
        call_id = await rung([filler])
        await answer(filler, call_id, joined)
        joined.append(filler)
    call_id = await rung([late])  # one at a time: each invitation must fit in the call
    call_id = await rung([last])
    await answer(last, call_id, joined)
    joined.append(last)
    await late.answer(call_id, rid="late")
    got = sorted([await late.receive(), await late.receive()], key=lambda m: m.TYPE)
    check(
        isinstance(got[0], CallEnded)
        and (got[0].call_id, got[0].reason, got[0].by) == (call_id, "call_full", late.user_id)
        and isinstance(got[1], Error)
        and (got[1].code, got[1].rid) == ("call_full", "late"),
        f"an answer to a full call got {shown(*got)}, not call_ended call_full and error call_full",
    )
    for client in joined:
        await client.expect(CallRejected, call_id=call_id, by=late.user_id, reason="call_full")
