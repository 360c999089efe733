"""Relay: SDP offers and answers and ICE candidates, passed from one participant to another.

Most of the traffic is this, so the path is kept short: one lookup of the call, a message built
positionally, one `Outbox.send` to the target's session id (looked up when the event commits).
A relay only reads records: its event copies nothing for a rollback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attrs import define

from callbox.codec import positional_constructor
from callbox.core.calls import call_of_member
from callbox.core.errors import IllegalTransition, Refused
from callbox.core.sessions import Session
from callbox.core.states import CALL_RELAYS, PARTY_RELAYS
from callbox.messages import (
    IceCandidate,
    RelayedIceCandidate,
    RelayedSdpAnswer,
    RelayedSdpOffer,
    SdpAnswer,
    SdpOffer,
    ServerMessage,
)

if TYPE_CHECKING:
    from callbox.core.outbox import Outbox
    from callbox.core.store import Store

_NEW_RELAYED_ICE_CANDIDATE = positional_constructor(RelayedIceCandidate)
_NEW_RELAYED_SDP_OFFER = positional_constructor(RelayedSdpOffer)
_NEW_RELAYED_SDP_ANSWER = positional_constructor(RelayedSdpAnswer)


@define(eq=False)
class Relay:
    store: Store
    out: Outbox

    def relay(self, session: Session, msg: SdpOffer | SdpAnswer | IceCandidate) -> None:
        """Pass SDP or ICE on, if the state table has a `relay` row for the call and both parties.

        The sender is a joined party: `call_of_member` found this session joined to the call."""
        call = call_of_member(self.store, session, msg.call_id)
        if not CALL_RELAYS[call.state]:
            reason = f"call {call.call_id} is {call.state}: relays wait for call_accepted"
            raise IllegalTransition(reason)
        target = call.parties.get(msg.to)
        if target is None or not PARTY_RELAYS[target.state] or msg.to == session.user_id:
            raise Refused("not_in_call", f"{msg.to} is not another participant of this call", "/to")
        relayed: ServerMessage
        # Positionally, every field (call_id, from_, payload, seq): see positional_constructor.
        if isinstance(msg, IceCandidate):  # the most frequent first
            relayed = _NEW_RELAYED_ICE_CANDIDATE(msg.call_id, session.user_id, msg.candidate, None)
        elif isinstance(msg, SdpOffer):
            relayed = _NEW_RELAYED_SDP_OFFER(msg.call_id, session.user_id, msg.sdp, None)
        else:
            relayed = _NEW_RELAYED_SDP_ANSWER(msg.call_id, session.user_id, msg.sdp, None)
        assert target.session_id is not None, f"{msg.to} is joined without a session"
        self.out.send(target.session_id, relayed)
