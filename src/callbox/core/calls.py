"""Calls: their records (parties, and where each stands in the state machine) and everything
that happens to them: initiate, ring, glare, answer, join, reject, invite, hang up, drop out, end,
and the call's timers. Relaying SDP and ICE within a call is `relay.py`.

Each call is a self-contained shard: nothing here looks at other calls, so handling a message
costs the size of one call, never the number of calls on the server. Every move of a call or a
party goes through the state table (`states.py`, checked against protocol/call-states.yaml), which
refuses a move it has no row for before anything changes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

from attrs import define, field, frozen

from callbox.config import Config
from callbox.core.actions import (
    CallTimer,
    CloseCall,
    DurationCapTimer,
    ExpiryWarningTimer,
    OpenCall,
    RingTimer,
)
from callbox.core.errors import Refused
from callbox.core.presence import Watchers
from callbox.core.records import shallow_copier
from callbox.core.rooms import room_of_member
from callbox.core.sessions import Session, add_to, discard_from, held_session
from callbox.core.states import (
    CallEvent,
    CallState,
    PartyEvent,
    PartyState,
    next_call_state,
    next_party_state,
)
from callbox.messages import (
    CallAccepted,
    CallAnswer,
    CallEnded,
    CallExpiring,
    CallIncoming,
    CallInitiate,
    CallInvite,
    CallJoin,
    CallReject,
    CallRejected,
    CallRinging,
    DropoutReason,
    EndReason,
    Hangup,
    HangupReason,
    JSONObject,
    Media,
    ParticipantJoined,
    ParticipantLeft,
    ServerMessage,
)

if TYPE_CHECKING:
    from callbox.core.outbox import Outbox
    from callbox.core.store import Store

END_REASON_FOR_DROPOUT: dict[DropoutReason, EndReason] = {
    "declined": "rejected",
    "busy": "busy",
    "offline": "offline",
    "ring_timeout": "ring_timeout",
    "call_full": "call_full",
}
LeaveReason = Literal["hangup", "disconnected"]
JOINED_EVER_KEPT = 1_000
"""Users a call remembers having joined, for `call.ended` (a room call may see more come and
go; schemas/webhooks/call.ended.json bounds the list the same)."""


@define(eq=False)
class Party:
    user_id: str
    state: PartyState
    session_id: str | None = None
    """The device in the call, once joined."""
    ringing_sessions: set[str] = field(factory=set)
    ring_deadline: float = 0.0
    offline: bool = False
    """Rung with no device connected (offline ringing: the deployer's backend was told, with
    `call.ringing_offline`) and none has come since: the ring timeout drops it out `offline`."""

    def apply(self, event: PartyEvent) -> None:
        self.state = next_party_state(self.state, event)

    def copy(self) -> Party:
        copy = _copy_party(self)
        copy.ringing_sessions = set(self.ringing_sessions)
        return copy


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
    started_at_ms: int | None = None
    """Unix time (ms) of the first answer, when the call became active (for `call.ended`)."""
    joined_ever: list[str] = field(factory=list)
    """Everyone who has joined the call, caller first, each once (for `call.ended`)."""

    def copy(self) -> Call:
        """A copy that shares no container the core changes in place (see core/records.py)."""
        copy = _copy_call(self)
        copy.parties = {user_id: party.copy() for user_id, party in self.parties.items()}
        copy.joined_ever = list(self.joined_ever)
        return copy

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


_copy_party = shallow_copier(Party)
_copy_call = shallow_copier(Call)


def _count_change(before: PartyState, after: PartyState, counted: PartyState) -> int:
    return int(after is counted) - int(before is counted)


@frozen
class Reply:
    """The request being answered: its `rid` is echoed on what is sent to the requesting session."""

    session_id: str
    rid: str | None

    def rid_for(self, session_id: str | None) -> str | None:
        return self.rid if session_id == self.session_id else None


def device_busy(session: Session) -> Refused:
    """A device is in one call at a time: refused before anything changes."""
    return Refused("user_busy", f"this device is in call {session.call_id}: hang up first")


# Lookups that explain themselves when they fail


def call_of_member(store: Store, session: Session, call_id: str) -> Call:
    """The call `session` has joined, or a `Refused` saying why it is not."""
    call = store.call(call_id)
    if call is not None and session.call_id == call_id:
        return call
    raise _not_member(session, call_id, call)


def call_of_invitee(store: Store, session: Session, call_id: str) -> Call:
    """A call ringing for `session`'s user, or a `Refused` saying why it is not."""
    call = store.call(call_id)
    party = None if call is None else call.parties.get(session.user_id)
    if call is not None and party is not None and party.state is PartyState.RINGING:
        return call
    raise _not_member(session, call_id, call)


def _not_member(session: Session, call_id: str, call: Call | None) -> Refused:
    if call_id in session.recently_ended:
        return Refused("invalid_state", f"call {call_id} has ended", "/call_id")
    if call is None:
        return Refused("unknown_call", f"no call {call_id}", "/call_id")
    party = call.parties.get(session.user_id)
    if party is None or party.state is PartyState.GONE:
        return Refused("not_in_call", f"you are not in call {call_id}", "/call_id")
    if party.state is PartyState.RINGING:
        return Refused(
            "invalid_state", f"call {call_id} is ringing: answer or reject it first", "/call_id"
        )
    if party.session_id == session.session_id:
        return Refused("invalid_state", f"you have already joined call {call_id}", "/call_id")
    return Refused("invalid_state", f"call {call_id} is joined on another device", "/call_id")


@define(eq=False)
class Calling:
    """Runs every call's lifecycle, from `call_initiate` to the one `call_ended` each party gets."""

    config: Config
    store: Store
    out: Outbox
    watchers: Watchers
    wall: float = 0.0
    """Unix time of the event being handled (set by the switchboard): webhook events carry it."""
    _sent: frozenset[str] = field(init=False)
    """The webhook event types the config sends (none without a webhook)."""
    _offline_ringing: bool = field(init=False)

    def __attrs_post_init__(self) -> None:
        self._sent = self.config.webhook_events_sent
        self._offline_ringing = self.config.offline_ringing

    # -----------------------------------------------------------------------------------------
    # Starting a call and ringing

    def initiate(self, session: Session, msg: CallInitiate, now: float) -> None:
        store = self.store
        if store.call(msg.call_id) is not None:
            raise Refused("call_exists", f"call {msg.call_id} already exists", "/call_id")
        room = None if msg.room is None else room_of_member(store, session, msg.room)
        if room is not None and room.call_id is not None:
            reason = f"room {room.name} already has call {room.call_id}: call_join it"
            raise Refused("call_exists", reason, "/room")
        to = room.members() if room is not None else msg.to or []
        to = [user_id for user_id in to if room is None or user_id != session.user_id]
        if room is not None and not to:
            raise Refused("user_offline", f"nobody else is in room {room.name}", "/room")
        if session.user_id in to:
            index = to.index(session.user_id)
            raise Refused("invalid_message", "a user cannot call themself", f"/to/{index}")
        if session.call_id is not None:
            raise device_busy(session)
        if len(self._user_calls(session.user_id)) >= self.config.max_calls_per_user:
            limit = self.config.max_calls_per_user
            raise Refused(
                "user_busy", f"you are already a party of {limit} calls, the most allowed"
            )
        if room is None and 1 + len(to) > self.config.max_participants:
            limit = self.config.max_participants
            raise Refused("call_full", f"a call holds at most {limit} participants", "/to")
        if room is None and len(to) == 1 and self._merge_glare(session, msg, to[0], now):
            return
        call = Call(
            call_id=msg.call_id,
            caller=session.user_id,
            media=msg.media,
            metadata=msg.metadata,
            room=msg.room,
        )
        if room is not None:
            room.call_id = call.call_id
        call.parties[session.user_id] = Party(
            user_id=session.user_id, state=PartyState.JOINED, session_id=session.session_id
        )
        store.add_call(call)
        store.add_call_of_user(session.user_id, call.call_id)
        session.call_id = call.call_id
        self.out.actions.append(OpenCall(call.call_id))
        self._opened(call, to)
        self.watchers.refresh(session.user_id)
        self._ring(call, to, session, msg.rid, now)

    def _opened(self, call: Call, invitees: list[str]) -> None:
        """A call exists, its caller joined: the backend hears of both."""
        call.joined_ever.append(call.caller)
        self._notify(
            "call.initiated",
            call_id=call.call_id,
            caller=call.caller,
            to=list(invitees),
            media={"audio": call.media.audio, "video": call.media.video},
            room=call.room,
            metadata=call.metadata,
        )
        self._notify("participant.joined", call_id=call.call_id, user_id=call.caller)

    def invite(self, session: Session, msg: CallInvite, now: float) -> None:
        call = call_of_member(self.store, session, msg.call_id)
        for index, user_id in enumerate(msg.to):
            party = call.parties.get(user_id)
            if party is not None and party.state is not PartyState.GONE:
                raise Refused(
                    "invalid_state", f"{user_id} is already {party.state}", f"/to/{index}"
                )
        if len(call.joined()) + len(msg.to) > self.config.max_participants:
            limit = self.config.max_participants
            raise Refused("call_full", f"a call holds at most {limit} participants", "/to")
        self._ring(call, msg.to, session, msg.rid, now)

    def ring_new_device(self, session: Session, now: float) -> None:
        """A device that connects while its user is being rung starts ringing too."""
        for call_id in self._user_calls(session.user_id):
            call = self._call(call_id)
            party = call.parties[session.user_id]
            if party.state is PartyState.RINGING:
                self._ring_device(call, party, session, now)

    def _ring(
        self, call: Call, user_ids: Iterable[str], by: Session, rid: str | None, now: float
    ) -> None:
        """Invite `user_ids`: ring the available, drop out the busy and the offline. With
        offline ringing on, the offline ring too, through the deployer's backend: they drop
        out `offline` at their ring timeout unless a device of theirs comes and answers."""
        available: list[Party] = []
        unavailable: list[tuple[Party, DropoutReason]] = []
        for user_id in user_ids:
            party = call.parties.setdefault(user_id, Party(user_id=user_id, state=PartyState.GONE))
            call.apply(CallEvent.INVITE, party)
            self.store.add_call_of_user(user_id, call.call_id)
            reason = self._unavailable(user_id, call.call_id)
            party.offline = reason == "offline" and self._offline_ringing
            if reason is None or party.offline:
                available.append(party)
            else:
                unavailable.append((party, reason))
        if available:
            offline = [p.user_id for p in available if p.offline]
            ringing = CallRinging(
                call_id=call.call_id,
                to=[p.user_id for p in available],
                offline=offline or None,
                rid=rid,
            )
            self.out.send(by.session_id, ringing)
        for party in available:
            party.ring_deadline = now + self.config.ring_timeout_ms / 1000
            self.out.start_timer(RingTimer(call.call_id, party.user_id), party.ring_deadline)
            if party.offline:
                self._notify_ringing_offline(call, party, now)
            for session in list(self._devices(party.user_id)):
                self._ring_device(call, party, session, now)
        for party, reason in unavailable:
            if call.state is not CallState.ENDED:
                self._drop_out(call, party, reason, Reply(by.session_id, rid))

    def _notify_ringing_offline(self, call: Call, party: Party, now: float) -> None:
        """The backend is asked to reach `party` (a push notification), until its ring expires."""
        expires_at = self.wall + (party.ring_deadline - now)
        self._notify(
            "call.ringing_offline",
            call_id=call.call_id,
            caller=call.caller,
            callee=party.user_id,
            media={"audio": call.media.audio, "video": call.media.video},
            metadata=call.metadata,
            expires_at=round(expires_at * 1000),
        )

    def _unavailable(self, user_id: str, call_id: str) -> DropoutReason | None:
        devices = self._devices(user_id)
        if not devices:
            return "offline"
        in_a_call = any(s.call_id is not None for s in devices)
        if (
            in_a_call
            or len(self._user_calls(user_id) - {call_id}) >= self.config.max_calls_per_user
        ):
            return "busy"
        return None

    def _ring_device(self, call: Call, party: Party, session: Session, now: float) -> None:
        party.offline = False  # reached: from now on, an unanswered ring times out
        party.ringing_sessions.add(session.session_id)
        session.ringing = add_to(session.ringing, call.call_id)
        incoming = CallIncoming(
            call_id=call.call_id,
            from_=call.caller,
            participants=call.roster(),
            media=call.media,
            expires_in_ms=max(0, round((party.ring_deadline - now) * 1000)),
            metadata=call.metadata,
        )
        self.out.send(session.session_id, incoming)

    def _merge_glare(self, session: Session, msg: CallInitiate, callee: str, now: float) -> bool:
        """Two users calling each other at once get one call: the lesser `call_id` survives."""
        for call_id in list(self._user_calls(session.user_id)):
            call = self._call(call_id)
            mine = call.parties.get(session.user_id)
            crossed = (
                call.caller == callee
                and len(call.parties) == 2
                and mine is not None
                and mine.state is PartyState.RINGING
            )
            if not crossed or mine is None:
                continue
            if call.call_id < msg.call_id:
                ended = CallEnded(call_id=msg.call_id, reason="merged", rid=msg.rid)
                self.out.send(session.session_id, ended)
                self._join(call, mine, session, Reply(session.session_id, msg.rid), now)
                return True
            their_session = self._session(call.parties[callee].session_id)
            call.apply(CallEvent.MERGE)
            self._end_call(call, "merged", by=session.user_id)
            merged = Call(
                call_id=msg.call_id, caller=session.user_id, media=msg.media, metadata=msg.metadata
            )
            merged.parties[session.user_id] = Party(
                user_id=session.user_id, state=PartyState.JOINED, session_id=session.session_id
            )
            merged.parties[callee] = Party(user_id=callee, state=PartyState.RINGING)
            self.store.add_call(merged)
            self.store.add_call_of_user(session.user_id, merged.call_id)
            self.store.add_call_of_user(callee, merged.call_id)
            session.call_id = merged.call_id
            self.out.actions.append(OpenCall(merged.call_id))
            self._opened(merged, [callee])
            reply = Reply(session.session_id, msg.rid)
            self._join(merged, merged.parties[callee], their_session, reply, now)
            return True
        return False

    # -----------------------------------------------------------------------------------------
    # Answering

    def answer(self, session: Session, msg: CallAnswer | CallJoin, now: float) -> None:
        if isinstance(msg, CallJoin):
            self._admit_room_member(session, msg.call_id)
        call = call_of_invitee(self.store, session, msg.call_id)
        party = call.parties[session.user_id]
        if session.call_id is not None:
            raise device_busy(session)
        if len(call.joined()) >= self.config.max_participants:
            self._drop_out(call, party, "call_full")
            limit = self.config.max_participants
            raise Refused("call_full", f"call {call.call_id} already has {limit} participants")
        self._join(call, party, session, Reply(session.session_id, msg.rid), now)

    def _admit_room_member(self, session: Session, call_id: str) -> None:
        """A member of a room may join the room's call without having been rung."""
        call = self.store.call(call_id)
        if call is None or call.room is None or call.room not in session.rooms:
            return
        if session.call_id is not None:  # refused before the member becomes a (ringing) party
            raise device_busy(session)
        party = call.parties.setdefault(
            session.user_id, Party(user_id=session.user_id, state=PartyState.GONE)
        )
        if party.state is PartyState.GONE:
            call.apply(CallEvent.INVITE, party)
            self.store.add_call_of_user(session.user_id, call_id)

    def _join(self, call: Call, party: Party, session: Session, reply: Reply, now: float) -> None:
        """`party` joins on `session`; its other devices stop ringing."""
        was_active = call.state is CallState.ACTIVE
        already_in = call.joined()
        call.apply(CallEvent.JOIN, party)
        party.session_id = session.session_id
        session.call_id = call.call_id
        self.out.cancel_timer(RingTimer(call.call_id, party.user_id))
        for other_id in party.ringing_sessions - {session.session_id}:
            other = self._session(other_id)
            other.forget_call(call.call_id)
            self.out.send(
                other_id,
                CallEnded(call_id=call.call_id, reason="answered_elsewhere", by=party.user_id),
            )
        party.ringing_sessions.clear()
        discard_from(session.ringing, call.call_id)
        participants = call.joined_user_ids()
        if call.ends_at is None:
            self._arm_duration_cap(call, now)
            call.started_at_ms = self._wall_ms()
            self._notify(
                "call.answered", call_id=call.call_id, by=party.user_id, participants=participants
            )
        if len(call.joined_ever) < JOINED_EVER_KEPT and party.user_id not in call.joined_ever:
            call.joined_ever.append(party.user_id)
        self._notify("participant.joined", call_id=call.call_id, user_id=party.user_id)
        for member in call.joined():
            echo = reply.rid_for(member.session_id)
            accepted = CallAccepted(
                call_id=call.call_id, by=party.user_id, participants=participants, rid=echo
            )
            self.send_party(member, accepted)
        if was_active:
            for member in already_in:
                self.send_party(
                    member, ParticipantJoined(call_id=call.call_id, user_id=party.user_id)
                )
        self.watchers.refresh(party.user_id)

    def _arm_duration_cap(self, call: Call, now: float) -> None:
        cap = self.config.max_call_duration_ms / 1000
        warning = min(self.config.call_expiring_warning_ms / 1000, cap)
        call.ends_at = now + cap
        if warning > 0:
            self.out.start_timer(ExpiryWarningTimer(call.call_id), call.ends_at - warning)
        self.out.start_timer(DurationCapTimer(call.call_id), call.ends_at)

    # -----------------------------------------------------------------------------------------
    # Leaving and ending

    def reject(self, session: Session, msg: CallReject) -> None:
        call = call_of_invitee(self.store, session, msg.call_id)
        party = call.parties[session.user_id]
        self._drop_out(call, party, msg.reason, Reply(session.session_id, msg.rid))

    def hangup(self, session: Session, msg: Hangup) -> None:
        call = call_of_member(self.store, session, msg.call_id)
        self.leave(call, session, "hangup", detail=msg.reason, rid=msg.rid)

    def leave_on_end(self, session: Session) -> None:
        """`session` has ended: it leaves the call it joined and stops ringing everywhere."""
        if session.call_id is not None:
            self.leave(self._call(session.call_id), session, "disconnected")
        for call_id in list(session.ringing):
            call = self._call(call_id)
            party = call.parties[session.user_id]
            party.ringing_sessions.discard(session.session_id)
            discard_from(session.ringing, call_id)
            if not party.ringing_sessions:
                self._drop_out(call, party, "offline")

    def leave(
        self,
        call: Call,
        session: Session,
        reason: LeaveReason,
        detail: HangupReason | None = None,
        rid: str | None = None,
    ) -> None:
        """A joined participant leaves; alone, unless that leaves nobody to talk to."""
        party = call.parties[session.user_id]
        state = call.apply(CallEvent.LEAVE, party)
        party.session_id = None
        session.forget_call(call.call_id)
        self._notify("participant.left", call_id=call.call_id, user_id=party.user_id, reason=reason)
        if reason == "hangup":
            self.out.send(
                session.session_id,
                CallEnded(
                    call_id=call.call_id, reason="hangup", by=party.user_id, detail=detail, rid=rid
                ),
            )
        if state is CallState.ENDED:
            self._end_call(call, reason, by=party.user_id, detail=detail)
        else:
            for member in call.joined():
                self.send_party(
                    member,
                    ParticipantLeft(call_id=call.call_id, user_id=party.user_id, reason=reason),
                )
        self._unlink(party.user_id, call.call_id)

    def _drop_out(
        self,
        call: Call,
        party: Party,
        reason: DropoutReason,
        reply: Reply | None = None,
    ) -> None:
        """An invitee leaves before joining; the call goes on while there is someone to wait for."""
        state = call.apply(CallEvent.DROPOUT, party)
        self.out.cancel_timer(RingTimer(call.call_id, party.user_id))
        end_reason = END_REASON_FOR_DROPOUT[reason]
        for session_id in party.ringing_sessions:
            device = self._session(session_id)
            device.forget_call(call.call_id)
            echo = None if reply is None else reply.rid_for(session_id)
            self.out.send(
                session_id,
                CallEnded(call_id=call.call_id, reason=end_reason, by=party.user_id, rid=echo),
            )
        party.ringing_sessions.clear()
        self._unlink(party.user_id, call.call_id)
        for member in call.joined():
            rid = None if reply is None else reply.rid_for(member.session_id)
            rejected = CallRejected(call_id=call.call_id, by=party.user_id, reason=reason, rid=rid)
            self.send_party(member, rejected)
        if state is CallState.ENDED:
            self._end_call(call, end_reason, by=party.user_id)

    def terminate(self, call: Call, by: str | None) -> None:
        """The deployer ends the call (the admin API): everyone still involved, joined or
        ringing, gets `call_ended` `terminated`; `by`, when a party's removal ended it."""
        call.apply(CallEvent.TERMINATE)
        self._end_call(call, "terminated", by=by)

    def _end_call(
        self, call: Call, reason: EndReason, by: str | None, detail: HangupReason | None = None
    ) -> None:
        """The call is over (the table has moved it to `ended`): every session still involved
        gets its one `call_ended`."""
        ended = CallEnded(call_id=call.call_id, reason=reason, by=by, detail=detail)
        for party in call.parties.values():
            devices = set(party.ringing_sessions)
            if party.session_id is not None:
                devices.add(party.session_id)
                self._notify(
                    "participant.left",
                    call_id=call.call_id,
                    user_id=party.user_id,
                    reason="call_ended",
                )
            for session_id in devices:
                session = self._session(session_id)
                session.forget_call(call.call_id)
                self.out.send(session_id, ended)
            party.ringing_sessions.clear()
            party.session_id = None
            self._unlink(party.user_id, call.call_id)
        assert call.state is CallState.ENDED, "only a transition of the table ends a call"
        self.store.remove_call(call.call_id)
        room = None if call.room is None else self.store.room(call.room)
        if room is not None and room.call_id == call.call_id:
            room.call_id = None
        self._notify_ended(call, reason, by)
        self.out.actions.append(CloseCall(call.call_id, reason))

    def _notify_ended(self, call: Call, reason: EndReason, by: str | None) -> None:
        ended_at = self._wall_ms()
        started_at = call.started_at_ms
        self._notify(
            "call.ended",
            call_id=call.call_id,
            reason=reason,
            by=by,
            initiator=call.caller,
            participants=list(call.joined_ever),
            started_at=started_at,
            ended_at=ended_at,
            duration_ms=0 if started_at is None else max(0, ended_at - started_at),
        )

    def _unlink(self, user_id: str, call_id: str) -> None:
        """`user_id` is no longer a party of `call_id`."""
        self.store.remove_call_of_user(user_id, call_id)
        self.watchers.refresh(user_id)
        self.store.forget_user_if_idle(user_id)

    # -----------------------------------------------------------------------------------------
    # The call's timers

    def timer_fired(self, key: CallTimer, now: float) -> None:
        """A ring timeout, expiry warning or duration cap is due; stale firings are ignored."""
        call = self.store.call(key.call_id)
        if call is None:
            return
        match key:
            case RingTimer(_, user_id):
                party = call.parties.get(user_id)
                ringing = party is not None and party.state is PartyState.RINGING
                # A re-invite may have moved the deadline.
                if ringing and party is not None and now >= party.ring_deadline:
                    self._drop_out(call, party, "offline" if party.offline else "ring_timeout")
            case ExpiryWarningTimer():
                if call.ends_at is not None:
                    call.apply(CallEvent.EXPIRY_WARNING)
                    ends_in_ms = max(0, round((call.ends_at - now) * 1000))
                    for party in call.joined():
                        self.send_party(
                            party, CallExpiring(call_id=call.call_id, ends_in_ms=ends_in_ms)
                        )
            case DurationCapTimer():
                call.apply(CallEvent.MAX_DURATION)
                self._end_call(call, "max_duration", by=None)

    # -----------------------------------------------------------------------------------------
    # Webhook events

    def _notify(self, event_type: str, **data: Any) -> None:
        """Emit webhook event `event_type` if the config sends it (none without a webhook)."""
        if event_type in self._sent:
            self.out.notify(event_type, self._wall_ms(), data)

    def _wall_ms(self) -> int:
        return round(self.wall * 1000)

    # -----------------------------------------------------------------------------------------
    # Records this module expects to find

    def send_party(self, party: Party, message: ServerMessage) -> None:
        if party.session_id is not None:
            self.out.send(party.session_id, message)

    def _call(self, call_id: str) -> Call:
        call = self.store.call(call_id)
        assert call is not None, f"call {call_id} is indexed but not held"
        return call

    def _session(self, session_id: str | None) -> Session:
        assert session_id is not None, "a joined party has its session"
        return held_session(self.store, session_id)

    def _devices(self, user_id: str) -> list[Session]:
        return self.store.devices(user_id)

    def _user_calls(self, user_id: str) -> set[str] | frozenset[str]:
        user = self.store.user(user_id)
        return frozenset() if user is None else user.calls
