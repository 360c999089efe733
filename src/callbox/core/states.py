"""The call state machine as plain data.

Everything that decides which call event is legal in which state, and where it leads, lives here;
`protocol/call-states.yaml` is the published copy and a test proves the two are identical.

A call has a state; each person in it (a *party*) has one too. Where a call event can lead to more
than one state, the outcome is picked by the call's *occupancy* after the event has changed who is
in it, so the rule "the call ends when at most one joined participant remains and no invitation is
still ringing" is one function (`occupancy`) instead of a flag on every path. 1:1 and group calls
run on the same table: a 1:1 call is a call with one invitee.

An event with no entry for the current state is illegal there: the lookup raises
`IllegalTransition`, a refusal answered `invalid_state` (the h11 approach: a lookup miss, not a
chain of ifs). That includes relays: `relay` is a self-loop of `active` (and of a `joined` party),
so "a relay needs a joined participant of an active call" is two rows here, not a check elsewhere.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from callbox.core.errors import IllegalTransition


class CallState(enum.StrEnum):
    RINGING = "ringing"
    """Fewer than two participants have joined; invitations are ringing."""
    ACTIVE = "active"
    """At least two participants have joined: media can flow, relays are allowed."""
    ENDED = "ended"
    """Final. Every session involved has been sent its `call_ended`."""


class CallEvent(enum.StrEnum):
    INVITE = "invite"
    """More people are rung (`call_invite`)."""
    JOIN = "join"
    """An invitee joins (`call_answer`, `call_join`, or the other side of a glare merge)."""
    DROPOUT = "dropout"
    """An invitee leaves before joining: declined, busy, offline, ring timeout, call full."""
    LEAVE = "leave"
    """A joined participant leaves: hangup, or its session ended for good."""
    EXPIRY_WARNING = "expiry_warning"
    """The duration cap is near: `call_expiring` is sent."""
    MAX_DURATION = "max_duration"
    """The duration cap is reached."""
    MERGE = "merge"
    """Glare: this call loses to the other side's call with the lesser `call_id`."""
    RELAY = "relay"
    """SDP or ICE from one joined party to another (`sdp_offer`, `sdp_answer`, `ice_candidate`)."""
    TERMINATE = "terminate"
    """The deployer ends the call (the admin API), or removes a party's sessions."""


class Occupancy(enum.StrEnum):
    TWO_OR_MORE_JOINED = "two_or_more_joined"
    ONE_JOINED_AND_RINGING = "one_joined_and_ringing"
    DESERTED = "deserted"
    """At most one joined participant and nobody ringing: nothing left to wait for."""


class PartyState(enum.StrEnum):
    RINGING = "ringing"
    JOINED = "joined"
    GONE = "gone"


class PartyEvent(enum.StrEnum):
    INVITE = "invite"
    JOIN = "join"
    DROPOUT = "dropout"
    LEAVE = "leave"
    RELAY = "relay"


def occupancy(joined: int, ringing: int) -> Occupancy:
    """Classify who is left in a call: the single place the end-of-call rule is written."""
    if joined >= 2:
        return Occupancy.TWO_OR_MORE_JOINED
    if joined == 1 and ringing > 0:
        return Occupancy.ONE_JOINED_AND_RINGING
    return Occupancy.DESERTED


BY_OCCUPANCY: Mapping[Occupancy, CallState] = {
    Occupancy.TWO_OR_MORE_JOINED: CallState.ACTIVE,
    Occupancy.ONE_JOINED_AND_RINGING: CallState.RINGING,
    Occupancy.DESERTED: CallState.ENDED,
}

CallOutcome = CallState | Mapping[Occupancy, CallState]

CALL_TRANSITIONS: Mapping[CallState, Mapping[CallEvent, CallOutcome]] = {
    CallState.RINGING: {
        CallEvent.INVITE: CallState.RINGING,
        CallEvent.JOIN: CallState.ACTIVE,
        CallEvent.DROPOUT: BY_OCCUPANCY,
        CallEvent.LEAVE: BY_OCCUPANCY,
        CallEvent.EXPIRY_WARNING: CallState.RINGING,
        CallEvent.MAX_DURATION: CallState.ENDED,
        CallEvent.MERGE: CallState.ENDED,
        CallEvent.TERMINATE: CallState.ENDED,
    },
    CallState.ACTIVE: {
        CallEvent.INVITE: CallState.ACTIVE,
        CallEvent.JOIN: CallState.ACTIVE,
        CallEvent.DROPOUT: CallState.ACTIVE,
        CallEvent.LEAVE: BY_OCCUPANCY,
        CallEvent.EXPIRY_WARNING: CallState.ACTIVE,
        CallEvent.MAX_DURATION: CallState.ENDED,
        CallEvent.RELAY: CallState.ACTIVE,
        CallEvent.TERMINATE: CallState.ENDED,
    },
    CallState.ENDED: {},
}
"""Call transitions. A mapping as the outcome means: pick by occupancy after the event."""

PARTY_TRANSITIONS: Mapping[PartyState, Mapping[PartyEvent, PartyState]] = {
    PartyState.RINGING: {PartyEvent.JOIN: PartyState.JOINED, PartyEvent.DROPOUT: PartyState.GONE},
    PartyState.JOINED: {PartyEvent.LEAVE: PartyState.GONE, PartyEvent.RELAY: PartyState.JOINED},
    PartyState.GONE: {PartyEvent.INVITE: PartyState.RINGING},
}
"""A party's own transitions; a new party enters at `ringing` (invited) or `joined` (the caller)."""

CALL_RELAYS: Mapping[CallState, bool] = {
    state: CallEvent.RELAY in events for state, events in CALL_TRANSITIONS.items()
}
"""Per call state, whether the table has a `relay` row: read on the relay path, which is most of
the traffic, as one dict lookup (no function call)."""

PARTY_RELAYS: Mapping[PartyState, bool] = {
    state: PartyEvent.RELAY in events for state, events in PARTY_TRANSITIONS.items()
}
"""Per party state, whether the party may send or receive a relay: the table's `relay` rows."""


def next_call_state(state: CallState, event: CallEvent, joined: int, ringing: int) -> CallState:
    """Where `event` leads a call in `state`, given its occupancy after the event."""
    try:
        outcome = CALL_TRANSITIONS[state][event]
    except KeyError:
        raise IllegalTransition(f"{event} is not allowed while the call is {state}") from None
    if isinstance(outcome, CallState):
        return outcome
    return outcome[occupancy(joined, ringing)]


def next_party_state(state: PartyState, event: PartyEvent) -> PartyState:
    try:
        return PARTY_TRANSITIONS[state][event]
    except KeyError:
        raise IllegalTransition(f"{event} is not allowed for a party that is {state}") from None
