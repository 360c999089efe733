"""Everything driven by a server timer: ring timeout, the duration cap, the reconnect grace.

Each case reads the timer's length from `welcome.limits` and is skipped when that is longer
than `--max-wait`; a message a timer sends must not come before the timer is due.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import trio

from callbox.client import Client, ProtocolViolation
from callbox.conformance.context import Context
from callbox.conformance.registry import Skip, case
from callbox.conformance.steps import (
    EARLY_S,
    after,
    answer,
    call,
    check,
    drain,
    ended,
    incoming,
    invite,
    is_ended,
    relays,
    ring,
    shown,
)
from callbox.messages import (
    CallEnded,
    CallExpiring,
    CallIncoming,
    CallRejected,
    CallRinging,
    Error,
    ParticipantLeft,
    Presence,
    ServerMessage,
)

GRACE_MARGIN_MS = 300
"""How long after the grace period a lost session is surely gone."""


def _grace(ctx: Context) -> int:
    return ctx.limits.reconnect_grace_ms


@case("timeouts.ring_timeout", "timeouts", covers=("end:ring_timeout",))
async def ring_timeout(ctx: Context) -> None:
    """An invitation unanswered for ring_timeout_ms ends a 1:1 call, ring_timeout, for both."""
    ms = ctx.limits.ring_timeout_ms
    ctx.wait("ring_timeout_ms", ms)
    alice, bob = await ctx.clients("alice", "bob")
    started = trio.current_time()
    call_id = await ring(alice, [bob])
    await after(bob, started, ms, CallEnded, call_id=call_id, reason="ring_timeout")
    await alice.expect(CallRejected, call_id=call_id, by=bob.user_id, reason="ring_timeout")
    await ended([alice], call_id, "ring_timeout", by=bob.user_id)


@case("timeouts.group_ring_timeout", "timeouts")
async def group_ring_timeout(ctx: Context) -> None:
    """In a group call an invitee who does not answer drops out alone; the call goes on."""
    ms = ctx.limits.ring_timeout_ms
    ctx.wait("ring_timeout_ms", ms)
    alice, bob, carol = await ctx.clients("alice", "bob", "carol")
    started = trio.current_time()
    call_id = await ring(alice, [bob, carol])
    await answer(bob, call_id, [alice])
    await after(carol, started, ms, CallEnded, call_id=call_id, reason="ring_timeout")
    for client in (alice, bob):
        await client.expect(CallRejected, call_id=call_id, by=carol.user_id, reason="ring_timeout")
    await relays(alice, bob, call_id)


async def _warned(ctx: Context, started: float, joined: list[Client], call_id: str) -> int:
    """Every joined party gets call_expiring, when the cap is that near; its ends_in_ms."""
    cap = ctx.limits.max_call_duration_ms
    warnings = [await c.expect(CallExpiring, call_id=call_id) for c in joined]
    ends_in = warnings[0].ends_in_ms
    elapsed = trio.current_time() - started
    check(0 < ends_in <= cap, f"call_expiring.ends_in_ms {ends_in} is not within the cap")
    check(
        elapsed >= (cap - ends_in) / 1000 - EARLY_S,
        f"call_expiring (ends_in_ms {ends_in}) came {elapsed:.3f} s into a {cap} ms call",
    )
    return ends_in


@case("call.active.expiry_warning", "timeouts", watches=("call_expiring",))
async def active_expiry_warning(ctx: Context) -> None:
    """active + expiry_warning: both get call_expiring; the call stays active."""
    ctx.wait("max_call_duration_ms", ctx.limits.max_call_duration_ms)
    alice, bob = await ctx.clients("alice", "bob")
    started = trio.current_time()
    call_id = await call(alice, bob)
    await _warned(ctx, started, [alice, bob], call_id)
    await relays(bob, alice, call_id)
    await alice.hangup(call_id)
    await ended([alice, bob], call_id, "hangup", by=alice.user_id)


@case(
    "call.active.max_duration",
    "timeouts",
    covers=("end:max_duration",),
    watches=("call_expiring",),
)
async def active_max_duration(ctx: Context) -> None:
    """active + max_duration: after call_expiring, the call ends max_duration for both."""
    cap = ctx.limits.max_call_duration_ms
    ctx.wait("max_call_duration_ms", cap)
    alice, bob = await ctx.clients("alice", "bob")
    started = trio.current_time()
    call_id = await call(alice, bob)
    await _warned(ctx, started, [alice, bob], call_id)
    for client in (alice, bob):
        await after(client, started, cap, CallEnded, call_id=call_id, reason="max_duration")
    await is_ended(alice, call_id, bob)


class RingingChain:
    """Keeps a call ringing: alice is the only party joined, and of two invitees one is always
    ringing, each invited again as soon as its ring times out."""

    def __init__(
        self, alice: Client, call_id: str, invitees: list[Client], rung: list[Client]
    ) -> None:
        self.alice, self.call_id = alice, call_id
        self.invitees = {invitee.user_id: invitee for invitee in invitees}
        self.rung = Counter(invitee.user_id for invitee in rung)
        """How often each invitee was rung, by alice's `call_ringing`s: those read before the
        chain began (`rung`), then those the chain reads (see `finish`)."""

    async def until(self, done: Callable[[ServerMessage], bool]) -> ServerMessage:
        """alice's messages until the one that is `done`; anything else must be the chain's."""
        while not done(message := await self.alice.receive()):
            match message:
                case CallRinging(call_id=self.call_id, rid="invite", to=to):
                    self.rung.update(to)
                case CallRejected(call_id=self.call_id, reason="ring_timeout", by=by) if (
                    by in self.invitees
                ):
                    await self.alice.invite(self.call_id, [by], rid="invite")
                case _:
                    raise ProtocolViolation(f"alice, in a ringing call, got {shown(message)}")
        return message

    async def finish(self, last_reason: str) -> None:
        """After the call's end: alice's invitations sent meanwhile are refused with
        invalid_state, and each invitee rang and stopped in turn, ring_timeout each time but
        maybe the last, `last_reason`.

        An invitee's messages are awaited, as many as alice's `call_ringing`s say it was rung,
        rather than drained with a ping: the call's end may have been committed on another
        node than the invitee's, whose copy may still be on its way when the invitee's pong,
        which has no `seq` to order it, comes."""
        for late in await drain(self.alice):
            check(
                isinstance(late, Error) and (late.code, late.rid) == ("invalid_state", "invite"),
                f"alice, after the call ended, got {shown(late)}",
            )
        for user_id, invitee in self.invitees.items():
            # Its first call_incoming has been read: then call_ended, and a pair per ring more.
            messages = [await invitee.receive() for _ in range(2 * self.rung[user_id] - 1)]
            kinds = [type(m) for m in messages]
            check(
                kinds == [CallEnded, *[CallIncoming, CallEnded] * (len(messages) // 2)],
                f"{invitee.user_id}, invited again and again, got {shown(*messages)}",
            )
            reasons = [m.reason for m in messages if isinstance(m, CallEnded)]
            check(
                all(reason == "ring_timeout" for reason in reasons[:-1])
                and reasons[-1] in ("ring_timeout", last_reason),
                f"{invitee.user_id}'s invitations ended {reasons}",
            )


async def _back_to_ringing(ctx: Context) -> tuple[RingingChain, float]:
    """A call that became active (arming the cap), then went back to ringing when bob left
    with carol and dave being rung in turn; and when it became active. alice's call_ringing for
    dave is left to the chain: call_expiring may come before it."""
    ctx.wait("max_call_duration_ms", ctx.limits.max_call_duration_ms)
    alice, bob, carol, dave = await ctx.clients("alice", "bob", "carol", "dave")
    started = trio.current_time()
    with alice.tolerating("call_expiring"), bob.tolerating("call_expiring"):
        call_id = await call(alice, bob)
        invited = trio.current_time()
        await invite(alice, call_id, [carol], alice)
        await bob.hangup(call_id)
        await bob.expect(CallEnded, call_id=call_id, reason="hangup")
        await alice.expect(ParticipantLeft, call_id=call_id, user_id=bob.user_id, reason="hangup")
    if alice.skipped["call_expiring"] or bob.skipped["call_expiring"]:
        raise Skip(
            "call_expiring came while the call was still active: the server's warning is too"
            f" long a part of max_call_duration_ms {ctx.limits.max_call_duration_ms} for a"
            " call to be ringing again when it comes"
        )
    await trio.sleep_until(invited + ctx.limits.ring_timeout_ms / 2000)
    # From here on call_expiring may come to alice at any time: the chain reads her messages.
    await alice.invite(call_id, [dave.user_id], rid="invite")
    await incoming(dave, call_id, alice)
    return RingingChain(alice, call_id, [carol, dave], rung=[carol]), started


@case("call.ringing.expiry_warning", "timeouts", watches=("call_expiring",))
async def ringing_expiry_warning(ctx: Context) -> None:
    """ringing + expiry_warning: in a call back to ringing, the joined party gets
    call_expiring (the invitees do not) and the call rings on."""
    chain, started = await _back_to_ringing(ctx)
    warning = await chain.until(lambda m: isinstance(m, CallExpiring))
    cap = ctx.limits.max_call_duration_ms
    assert isinstance(warning, CallExpiring)
    check(
        trio.current_time() - started >= (cap - warning.ends_in_ms) / 1000 - EARLY_S,
        f"call_expiring (ends_in_ms {warning.ends_in_ms}) came early in a {cap} ms call",
    )
    await chain.alice.hangup(chain.call_id, rid="h")
    await chain.until(lambda m: isinstance(m, CallEnded) and m.rid == "h")
    await chain.finish("hangup")


@case("call.ringing.max_duration", "timeouts", watches=("call_expiring",))
async def ringing_max_duration(ctx: Context) -> None:
    """ringing + max_duration: the call ends max_duration for the joined party and for the
    invitee being rung."""
    chain, started = await _back_to_ringing(ctx)
    await chain.until(lambda m: isinstance(m, CallExpiring))
    end = await chain.until(lambda m: isinstance(m, CallEnded))
    check(
        isinstance(end, CallEnded) and end.reason == "max_duration",
        f"a call at its cap ended with {shown(end)}",
    )
    cap = ctx.limits.max_call_duration_ms
    elapsed = trio.current_time() - started
    check(elapsed >= cap / 1000 - EARLY_S, f"max_duration after {elapsed:.3f} s of {cap} ms")
    await chain.finish("max_duration")


@case("timeouts.disconnected_after_grace", "timeouts", covers=("end:disconnected",))
async def disconnected_after_grace(ctx: Context) -> None:
    """A connection lost and not resumed ends its calls, disconnected, after the grace period
    and not before."""
    ms = _grace(ctx)
    ctx.call_lasts("waiting out reconnect_grace_ms", ms)
    ctx.wait("reconnect_grace_ms", ms)
    alice, bob = await ctx.clients("alice", "bob")
    call_id = await call(alice, bob)
    started = trio.current_time()
    await bob.drop()
    await after(alice, started, ms, CallEnded, call_id=call_id, reason="disconnected")


@case("timeouts.ringing_device_lost", "timeouts", covers=("end:offline",))
async def ringing_device_lost(ctx: Context) -> None:
    """A callee whose only ringing device is lost for good drops out offline after the grace
    period."""
    ms = _grace(ctx)
    if ms + GRACE_MARGIN_MS > ctx.limits.ring_timeout_ms:
        raise Skip(
            "reconnect_grace_ms is not shorter than ring_timeout_ms: the ring times out first"
        )
    ctx.wait("reconnect_grace_ms", ms)
    alice, bob = await ctx.clients("alice", "bob")
    call_id = await ring(alice, [bob])
    started = trio.current_time()
    await bob.drop()
    await after(alice, started, ms, CallRejected, call_id=call_id, reason="offline")
    await ended([alice], call_id, "offline", by=bob.user_id)


@case("timeouts.resume_expired", "timeouts")
async def resume_expired(ctx: Context) -> None:
    """After the grace period a session cannot be resumed: resumed false."""
    seconds = ctx.wait("reconnect_grace_ms", _grace(ctx) + GRACE_MARGIN_MS)
    bob = await ctx.client("bob")
    await bob.drop()
    await trio.sleep(seconds)
    check(not (await bob.resume()).resumed, "resume after the grace period: resumed true")


@case("timeouts.offline_after_grace", "timeouts", watches=("presence",))
async def offline_after_grace(ctx: Context) -> None:
    """A user whose last connection is lost is shown offline (with last_seen) once the grace
    period is over, not before."""
    ms = _grace(ctx)
    ctx.wait("reconnect_grace_ms", ms)
    watcher, a = await ctx.clients("watcher", "a")
    await watcher.presence_subscribe([a.user_id], rid="w")
    await watcher.expect(Presence, user_id=a.user_id, status="online", rid="w")
    started = trio.current_time()
    await a.drop()
    gone = await after(watcher, started, ms, Presence, user_id=a.user_id, status="offline")
    check(gone.last_seen is not None, "offline presence of a user seen before lacks last_seen")


@case("timeouts.hello_timeout", "timeouts")
async def hello_timeout(ctx: Context) -> None:
    """A connection that sends no hello within limits.hello_timeout_ms is closed with 4003,
    not before."""
    probe = await ctx.client("probe")
    ms = probe.limits.hello_timeout_ms
    ctx.wait("hello_timeout_ms", ms)
    started = trio.current_time()
    silent = await ctx.connection()
    code = await silent.wait_closed()
    elapsed = trio.current_time() - started
    check(code == 4003, f"a connection silent past hello_timeout_ms was closed with {code}")
    check(elapsed >= ms / 1000 - EARLY_S, f"closed after {elapsed:.3f} s, before its {ms} ms")
