"""Every row of the call state table (protocol/call-states.yaml), as a client can observe it.

A case per (state, event[, occupancy]) row, named ``call.<state>.<event>[.<occupancy>]``: it
drives a call into the state, applies the event, checks who is told what, and then checks the
resulting state by its behaviour: in `active` relays between joined parties go through, in
`ringing` they are refused with `invalid_state`, once `ended` every message about the call is.
Rows driven by the duration cap wait for it, so they are in the `timeouts` section (cases/
timeouts.py). A test proves these ids are the rows.
"""

from __future__ import annotations

from callbox.conformance.admin import segment
from callbox.conformance.cases.calls import new_call_lesser
from callbox.conformance.context import Context
from callbox.conformance.registry import Case, Skip, add, case
from callbox.conformance.steps import (
    CANDIDATE,
    SDP,
    answer,
    call,
    check,
    ended,
    invite,
    is_ended,
    is_ringing,
    relays,
    ring,
)
from callbox.messages import (
    CallEnded,
    CallRejected,
    ParticipantLeft,
    RelayedIceCandidate,
    RelayedSdpAnswer,
    RelayedSdpOffer,
)

UNREACHABLE = {
    "ringing.dropout.two_or_more_joined": "a dropout leaves the joined parties as they were,"
    " and a ringing call has exactly one",
    "ringing.leave.two_or_more_joined": "a ringing call has one joined party: after it leaves,"
    " none is left",
    "ringing.leave.one_joined_and_ringing": "a ringing call has one joined party: after it"
    " leaves, none is left",
}
"""Rows the table lists (its occupancy outcomes are shared) that no sequence of events reaches."""


def _unreachable(row: str) -> None:
    """Registers `row` as a case that reports, with why, that no sequence of events reaches it."""
    why = UNREACHABLE[row]

    async def run(ctx: Context) -> None:
        """A row no sequence of events reaches: reported, with why, so that every row is."""
        raise Skip(f"unreachable: {why}")

    add(Case(id=f"call.{row}", section="states", run=run))


@case("call.ringing.invite", "states")
async def ringing_invite(ctx: Context) -> None:
    """ringing + invite: the new invitee rings too; the call stays ringing."""
    alice, bob, carol = await ctx.clients("alice", "bob", "carol")
    call_id = await ring(alice, [bob])
    await invite(alice, call_id, [carol], alice)
    await is_ringing(alice, call_id, bob)


@case("call.ringing.join", "states")
async def ringing_join(ctx: Context) -> None:
    """ringing + join: both get call_accepted; the call is active."""
    alice, bob = await ctx.clients("alice", "bob")
    call_id = await ring(alice, [bob])
    await answer(bob, call_id, [alice])
    await relays(bob, alice, call_id)


_unreachable("ringing.dropout.two_or_more_joined")


@case("call.ringing.dropout.one_joined_and_ringing", "states")
async def ringing_dropout_ringing(ctx: Context) -> None:
    """ringing + dropout with an invitation left: the decliner drops out alone (call_rejected to
    the caller); the call rings on, and the other invitee can still answer."""
    alice, bob, carol = await ctx.clients("alice", "bob", "carol")
    call_id = await ring(alice, [bob, carol])
    await bob.reject(call_id, rid="no")
    await bob.expect(CallEnded, call_id=call_id, reason="rejected", by=bob.user_id, rid="no")
    await alice.expect(CallRejected, call_id=call_id, by=bob.user_id, reason="declined")
    await is_ringing(alice, call_id, carol)
    await answer(carol, call_id, [alice])
    await relays(carol, alice, call_id)


@case("call.ringing.dropout.deserted", "states", covers=("end:rejected",))
async def ringing_dropout_deserted(ctx: Context) -> None:
    """ringing + dropout of the last invitee: a decline ends a 1:1 call, rejected, for both."""
    alice, bob = await ctx.clients("alice", "bob")
    call_id = await ring(alice, [bob])
    await bob.reject(call_id, "declined", rid="no")
    await bob.expect(CallEnded, call_id=call_id, reason="rejected", by=bob.user_id, rid="no")
    await alice.expect(CallRejected, call_id=call_id, by=bob.user_id, reason="declined")
    await ended([alice], call_id, "rejected", by=bob.user_id)
    await is_ended(alice, call_id, bob)
    await is_ended(bob, call_id, alice)


_unreachable("ringing.leave.two_or_more_joined")
_unreachable("ringing.leave.one_joined_and_ringing")


@case("call.ringing.leave.deserted", "states", covers=("end:hangup",))
async def ringing_leave_deserted(ctx: Context) -> None:
    """ringing + leave: the caller hanging up ends the call, hangup, for everyone rung."""
    alice, bob = await ctx.clients("alice", "bob")
    call_id = await ring(alice, [bob])
    await alice.hangup(call_id, rid="h")
    await alice.expect(CallEnded, call_id=call_id, reason="hangup", by=alice.user_id, rid="h")
    await ended([bob], call_id, "hangup", by=alice.user_id)
    await is_ended(alice, call_id, bob)
    await is_ended(bob, call_id, alice)


add(Case(id="call.ringing.merge", section="states", run=new_call_lesser))


@case("call.active.invite", "states")
async def active_invite(ctx: Context) -> None:
    """active + invite: the invitee rings; the call stays active."""
    alice, bob, carol = await ctx.clients("alice", "bob", "carol")
    call_id = await call(alice, bob)
    await invite(alice, call_id, [carol], alice)
    await relays(bob, alice, call_id)


@case("call.active.join", "states")
async def active_join(ctx: Context) -> None:
    """active + join: all get call_accepted, those already in participant_joined; the
    newcomer's relays reach each of them."""
    alice, bob, carol = await ctx.clients("alice", "bob", "carol")
    call_id = await call(alice, bob)
    await invite(bob, call_id, [carol], alice)
    await answer(carol, call_id, [alice, bob])
    await relays(carol, alice, call_id)
    await relays(carol, bob, call_id)


@case("call.active.dropout", "states")
async def active_dropout(ctx: Context) -> None:
    """active + dropout: the invitee who declines drops out alone (call_rejected to all
    joined); the call stays active."""
    alice, bob, carol = await ctx.clients("alice", "bob", "carol")
    call_id = await call(alice, bob)
    await invite(alice, call_id, [carol], alice)
    await carol.reject(call_id, rid="no")
    await carol.expect(CallEnded, call_id=call_id, reason="rejected", by=carol.user_id, rid="no")
    for client in (alice, bob):
        await client.expect(CallRejected, call_id=call_id, by=carol.user_id, reason="declined")
    await relays(bob, alice, call_id)


@case("call.active.leave.two_or_more_joined", "states")
async def active_leave_active(ctx: Context) -> None:
    """active + leave with two left: the leaver alone ends (participant_left to the others,
    reason hangup); they stay in an active call."""
    alice, bob, carol = await ctx.clients("alice", "bob", "carol")
    call_id = await call(alice, bob, carol)
    await alice.hangup(call_id, rid="h")
    await alice.expect(CallEnded, call_id=call_id, reason="hangup", by=alice.user_id, rid="h")
    for client in (bob, carol):
        await client.expect(
            ParticipantLeft, call_id=call_id, user_id=alice.user_id, reason="hangup"
        )
    await relays(bob, carol, call_id)


@case("call.active.leave.one_joined_and_ringing", "states")
async def active_leave_ringing(ctx: Context) -> None:
    """active + leave with one left and an invitation ringing: the call goes back to ringing,
    and becomes active again when the invitee answers."""
    alice, bob, carol = await ctx.clients("alice", "bob", "carol")
    call_id = await call(alice, bob)
    await invite(alice, call_id, [carol], alice)
    await bob.hangup(call_id, rid="h")
    await bob.expect(CallEnded, call_id=call_id, reason="hangup", by=bob.user_id, rid="h")
    await alice.expect(ParticipantLeft, call_id=call_id, user_id=bob.user_id, reason="hangup")
    await is_ringing(alice, call_id, carol)
    await answer(carol, call_id, [alice])
    await relays(carol, alice, call_id)


@case("call.active.leave.deserted", "states", covers=("end:hangup",))
async def active_leave_deserted(ctx: Context) -> None:
    """active + leave of one of two: the call ends, hangup with by, for both."""
    alice, bob = await ctx.clients("alice", "bob")
    call_id = await call(alice, bob)
    await bob.hangup(call_id, rid="h")
    await bob.expect(CallEnded, call_id=call_id, reason="hangup", by=bob.user_id, rid="h")
    await ended([alice], call_id, "hangup", by=bob.user_id)
    await is_ended(alice, call_id, bob)
    await is_ended(bob, call_id, alice)


@case("call.active.relay", "states")
async def active_relay(ctx: Context) -> None:
    """active + relay: each kind (sdp_offer, sdp_answer, ice_candidate) reaches the one joined
    peer named, with `from`; the call stays active, so relays still pass the other way."""
    alice, bob, carol = await ctx.clients("alice", "bob", "carol")
    call_id = await call(alice, bob, carol)
    await alice.offer(call_id, bob.user_id, SDP)
    await bob.expect(RelayedSdpOffer, call_id=call_id, from_=alice.user_id, sdp=SDP)
    await bob.answer_sdp(call_id, alice.user_id, SDP)
    await alice.expect(RelayedSdpAnswer, call_id=call_id, from_=bob.user_id, sdp=SDP)
    await alice.candidate(call_id, carol.user_id, CANDIDATE)
    await carol.expect(
        RelayedIceCandidate, call_id=call_id, from_=alice.user_id, candidate=CANDIDATE
    )
    await relays(carol, bob, call_id)


# Rows driven by the deployer's admin API: they need `--admin-token`.


@case("call.ringing.terminate", "states", covers=("end:terminated",))
async def ringing_terminate(ctx: Context) -> None:
    """The deployer ends a ringing call: caller and callee get call_ended terminated."""
    alice, bob = await ctx.clients("alice", "bob")
    call_id = await ring(alice, [bob])
    await terminated(ctx, call_id)
    await ended([alice, bob], call_id, "terminated")
    await is_ended(alice, call_id, bob)


@case("call.active.terminate", "states", covers=("end:terminated",))
async def active_terminate(ctx: Context) -> None:
    """The deployer ends an active call: both parties get call_ended terminated."""
    alice, bob = await ctx.clients("alice", "bob")
    call_id = await call(alice, bob)
    await terminated(ctx, call_id)
    await ended([alice, bob], call_id, "terminated")
    await is_ended(bob, call_id, alice)


async def terminated(ctx: Context, call_id: str) -> None:
    status = await ctx.admin("DELETE", f"/api/v1/calls/{segment(call_id)}")
    check(status == 204, f"DELETE /api/v1/calls/{call_id} answered {status}, not 204")
