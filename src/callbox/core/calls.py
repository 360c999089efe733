"""A call's own state: its parties and where it stands in the state machine.

Each call is a self-contained shard: nothing here looks at other calls, so routing a message costs
the size of one call, never the number of calls on the server.
"""

from __future__ import annotations

from attrs import define, field

from callbox.core.states import (
    CallEvent,
    CallState,
    PartyEvent,
    PartyState,
    next_call_state,
    next_party_state,
)
from callbox.messages import JSONObject, Media


@define(eq=False)
class Party:
    user_id: str
    state: PartyState
    session_id: str | None = None
    """The device in the call, once joined."""
    ringing_sessions: set[str] = field(factory=set)
    ring_deadline: float = 0.0

    def apply(self, event: PartyEvent) -> None:
        self.state = next_party_state(self.state, event)


@define(eq=False)
class Call:
    call_id: str
    caller: str
    media: Media
    metadata: JSONObject | None
    room: str | None = None
    """The room whose members may `call_join` without being rung."""
    parties: dict[str, Party] = field(factory=dict)
    state: CallState = CallState.RINGING
    ends_at: float | None = None
    """When the duration cap ends the call; set when it first becomes active."""

    def joined(self) -> list[Party]:
        return [party for party in self.parties.values() if party.state is PartyState.JOINED]

    def ringing(self) -> list[Party]:
        return [party for party in self.parties.values() if party.state is PartyState.RINGING]

    def joined_user_ids(self) -> list[str]:
        return [party.user_id for party in self.joined()]

    def roster(self) -> list[str]:
        """Everyone joined or still being rung, in the order they entered the call."""
        return [p.user_id for p in self.parties.values() if p.state is not PartyState.GONE]

    def apply(self, event: CallEvent, party: Party | None = None) -> CallState:
        """Move `party` (if any) and then the call along `event`; returns the new call state.

        Legality is checked against both tables before anything changes, so a refused event
        leaves the call exactly as it was.
        """
        party_event = PartyEvent(event) if party is not None else None
        joined = len(self.joined())
        ringing = len(self.ringing())
        if party is not None and party_event is not None:
            new_party_state = next_party_state(party.state, party_event)
            joined += _count_change(party.state, new_party_state, PartyState.JOINED)
            ringing += _count_change(party.state, new_party_state, PartyState.RINGING)
        new_state = next_call_state(self.state, event, joined, ringing)
        if party is not None and party_event is not None:
            party.apply(party_event)
        self.state = new_state
        return new_state


def _count_change(before: PartyState, after: PartyState, counted: PartyState) -> int:
    return int(after is counted) - int(before is counted)
