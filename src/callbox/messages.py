"""Typed signaling messages: one frozen attrs class per message of `schemas/`.

The wire format is owned by the JSON Schemas; these classes are its typed mirror. A test proves the
two sets match (every class has a schema, every schema a class) and that valid instances round-trip.

Conventions, so the codec can stay generic:
- Each class has a ``TYPE`` class variable, the wire ``type`` tag.
- A field whose default is ``None`` is optional and is left out of the wire form when ``None``;
  a field without a default is required and always written (``None`` then means JSON ``null``).
- A field named after a Python keyword carries its wire name in ``metadata={"wire": ...}``.
- Objects the server only carries and never interprets (ICE candidates, call metadata) stay plain
  JSON so that they are relayed exactly as sent.
- Server messages carry ``seq`` (stamped by the session when sent) and ``rid`` (echoed on replies).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from attrs import field, frozen

JSONObject = dict[str, Any]
IceCandidateInit = dict[str, Any]
"""An RTCIceCandidateInit as the browser produced it: relayed verbatim, never normalized."""

RejectReason = Literal["declined", "busy"]
HangupReason = Literal["normal", "ice_failed", "media_failed", "error"]
DropoutReason = Literal["declined", "busy", "offline", "ring_timeout", "call_full"]
LeaveReason = Literal["hangup", "disconnected"]
PresenceStatus = Literal["online", "away", "dnd"]
"""What a device says of itself."""
UserStatus = Literal["online", "away", "dnd", "in_call", "offline"]
"""What watchers see of a user: the merge of all the user's devices."""
EndReason = Literal[
    "hangup",
    "rejected",
    "busy",
    "ring_timeout",
    "max_duration",
    "disconnected",
    "offline",
    "answered_elsewhere",
    "merged",
    "call_full",
    "error",
    "terminated",
]
ErrorCode = Literal[
    "invalid_json",
    "invalid_message",
    "unknown_type",
    "not_authenticated",
    "auth_failed",
    "unknown_call",
    "not_in_call",
    "invalid_state",
    "call_exists",
    "call_full",
    "user_busy",
    "user_offline",
    "rate_limited",
    "message_too_large",
    "session_limit",
    "not_in_room",
    "room_full",
    "limit_reached",
    "internal",
    "unavailable",
]


# ---------------------------------------------------------------------------------------------
# Nested objects


@frozen
class Media:
    audio: bool
    video: bool


@frozen
class IceServer:
    """An RTCIceServer: what a client passes straight to ``new RTCPeerConnection({iceServers})``."""

    urls: list[str]
    username: str | None = None
    credential: str | None = None


@frozen
class Limits:
    """The server's limits, announced in ``welcome`` so clients never have to guess them."""

    max_message_bytes: int
    max_call_duration_ms: int
    ring_timeout_ms: int
    reconnect_grace_ms: int
    max_participants: int
    max_calls_per_user: int
    messages_per_second: int
    message_burst: int
    max_rooms_per_session: int
    max_room_members: int
    max_broadcast_bytes: int
    broadcasts_per_second: int
    max_presence_subscriptions: int
    replay_buffer_messages: int
    replay_buffer_bytes: int
    max_nesting_depth: int
    hello_timeout_ms: int


# ---------------------------------------------------------------------------------------------
# Client to server


@frozen(kw_only=True)
class Hello:
    TYPE: ClassVar[str] = "hello"
    token: str | None = None
    user_id: str | None = None
    device_id: str | None = None
    resume: str | None = None
    last_seq: int | None = None
    rid: str | None = None
    cseq: ClassVar[None] = None
    """Belongs to the connection: never numbered (see `cseq` on the others)."""


@frozen(kw_only=True)
class Ping:
    TYPE: ClassVar[str] = "ping"
    ts: float | None = None
    rid: str | None = None
    cseq: ClassVar[None] = None
    """Belongs to the connection: never numbered (see `cseq` on the others)."""


@frozen(kw_only=True)
class Bye:
    TYPE: ClassVar[str] = "bye"
    rid: str | None = None
    cseq: int | None = None


@frozen(kw_only=True)
class Ack:
    TYPE: ClassVar[str] = "ack"
    last_seq: int
    rid: str | None = None
    cseq: int | None = None


@frozen(kw_only=True)
class CallInitiate:
    """Rings the users in `to`, or every other member of `room` (exactly one of the two)."""

    TYPE: ClassVar[str] = "call_initiate"
    call_id: str
    media: Media
    to: list[str] | None = None
    room: str | None = None
    metadata: JSONObject | None = None
    rid: str | None = None
    cseq: int | None = None


@frozen(kw_only=True)
class CallAnswer:
    TYPE: ClassVar[str] = "call_answer"
    call_id: str
    media: Media | None = None
    rid: str | None = None
    cseq: int | None = None


@frozen(kw_only=True)
class CallReject:
    TYPE: ClassVar[str] = "call_reject"
    call_id: str
    reason: RejectReason
    rid: str | None = None
    cseq: int | None = None


@frozen(kw_only=True)
class CallInvite:
    TYPE: ClassVar[str] = "call_invite"
    call_id: str
    to: list[str]
    rid: str | None = None
    cseq: int | None = None


@frozen(kw_only=True)
class CallJoin:
    TYPE: ClassVar[str] = "call_join"
    call_id: str
    rid: str | None = None
    cseq: int | None = None


@frozen(kw_only=True)
class Hangup:
    TYPE: ClassVar[str] = "hangup"
    call_id: str
    reason: HangupReason | None = None
    rid: str | None = None
    cseq: int | None = None


@frozen(kw_only=True)
class SdpOffer:
    TYPE: ClassVar[str] = "sdp_offer"
    call_id: str
    to: str
    sdp: str
    rid: str | None = None
    cseq: int | None = None


@frozen(kw_only=True)
class SdpAnswer:
    TYPE: ClassVar[str] = "sdp_answer"
    call_id: str
    to: str
    sdp: str
    rid: str | None = None
    cseq: int | None = None


@frozen(kw_only=True)
class IceCandidate:
    TYPE: ClassVar[str] = "ice_candidate"
    call_id: str
    to: str
    candidate: IceCandidateInit | None
    """``None`` (JSON ``null``) is end-of-candidates."""
    rid: str | None = None
    cseq: int | None = None


@frozen(kw_only=True)
class RoomJoin:
    TYPE: ClassVar[str] = "room_join"
    room: str
    rid: str | None = None
    cseq: int | None = None


@frozen(kw_only=True)
class RoomLeave:
    TYPE: ClassVar[str] = "room_leave"
    room: str
    rid: str | None = None
    cseq: int | None = None


@frozen(kw_only=True)
class RoomBroadcast:
    TYPE: ClassVar[str] = "room_broadcast"
    room: str
    data: Any
    """Any JSON value, relayed verbatim; its encoded size is bounded by `max_broadcast_bytes`."""
    rid: str | None = None
    cseq: int | None = None


@frozen(kw_only=True)
class PresenceSubscribe:
    TYPE: ClassVar[str] = "presence_subscribe"
    users: list[str]
    rid: str | None = None
    cseq: int | None = None


@frozen(kw_only=True)
class PresenceUnsubscribe:
    TYPE: ClassVar[str] = "presence_unsubscribe"
    users: list[str]
    rid: str | None = None
    cseq: int | None = None


@frozen(kw_only=True)
class PresenceSet:
    TYPE: ClassVar[str] = "presence_set"
    status: PresenceStatus
    rid: str | None = None
    cseq: int | None = None


# ---------------------------------------------------------------------------------------------
# Server to client


@frozen(kw_only=True)
class Welcome:
    TYPE: ClassVar[str] = "welcome"
    user_id: str
    session_id: str
    resume_token: str
    resumed: bool
    ice_servers: list[IceServer]
    heartbeat_ms: int
    limits: Limits
    last_cseq: int | None = None
    node: str | None = None
    rid: str | None = None


@frozen(kw_only=True)
class IceServersUpdate:
    """Fresh TURN credentials, pushed before the ones in ``welcome`` expire."""

    TYPE: ClassVar[str] = "ice_servers"
    ice_servers: list[IceServer]
    seq: int | None = None


@frozen(kw_only=True)
class Pong:
    TYPE: ClassVar[str] = "pong"
    ts: float | None = None
    rid: str | None = None


@frozen(kw_only=True)
class CallRinging:
    TYPE: ClassVar[str] = "call_ringing"
    call_id: str
    to: list[str]
    offline: list[str] | None = None
    rid: str | None = None
    seq: int | None = None


@frozen(kw_only=True)
class CallIncoming:
    TYPE: ClassVar[str] = "call_incoming"
    call_id: str
    from_: str = field(metadata={"wire": "from"})
    participants: list[str]
    media: Media
    expires_in_ms: int
    metadata: JSONObject | None = None
    seq: int | None = None


@frozen(kw_only=True)
class CallAccepted:
    TYPE: ClassVar[str] = "call_accepted"
    call_id: str
    by: str
    participants: list[str]
    rid: str | None = None
    seq: int | None = None


@frozen(kw_only=True)
class CallRejected:
    TYPE: ClassVar[str] = "call_rejected"
    call_id: str
    by: str
    reason: DropoutReason
    rid: str | None = None
    seq: int | None = None


@frozen(kw_only=True)
class ParticipantJoined:
    TYPE: ClassVar[str] = "participant_joined"
    call_id: str
    user_id: str
    seq: int | None = None


@frozen(kw_only=True)
class ParticipantLeft:
    TYPE: ClassVar[str] = "participant_left"
    call_id: str
    user_id: str
    reason: LeaveReason
    seq: int | None = None


@frozen(kw_only=True)
class CallExpiring:
    TYPE: ClassVar[str] = "call_expiring"
    call_id: str
    ends_in_ms: int
    seq: int | None = None


@frozen(kw_only=True)
class CallEnded:
    TYPE: ClassVar[str] = "call_ended"
    call_id: str
    reason: EndReason
    by: str | None = None
    detail: HangupReason | None = None
    rid: str | None = None
    seq: int | None = None


@frozen(kw_only=True)
class RelayedSdpOffer:
    TYPE: ClassVar[str] = "sdp_offer"
    call_id: str
    from_: str = field(metadata={"wire": "from"})
    sdp: str
    seq: int | None = None


@frozen(kw_only=True)
class RelayedSdpAnswer:
    TYPE: ClassVar[str] = "sdp_answer"
    call_id: str
    from_: str = field(metadata={"wire": "from"})
    sdp: str
    seq: int | None = None


@frozen(kw_only=True)
class RelayedIceCandidate:
    TYPE: ClassVar[str] = "ice_candidate"
    call_id: str
    from_: str = field(metadata={"wire": "from"})
    candidate: IceCandidateInit | None
    seq: int | None = None


@frozen(kw_only=True)
class RoomJoined:
    TYPE: ClassVar[str] = "room_joined"
    room: str
    members: list[str]
    call_id: str | None = None
    """The room's running call, if any: `call_join` it."""
    rid: str | None = None
    seq: int | None = None


@frozen(kw_only=True)
class RoomLeft:
    """Confirms `room_leave` (an extension of the outline: every request gets an answer)."""

    TYPE: ClassVar[str] = "room_left"
    room: str
    rid: str | None = None
    seq: int | None = None


@frozen(kw_only=True)
class RoomMemberJoined:
    TYPE: ClassVar[str] = "room_member_joined"
    room: str
    user_id: str
    seq: int | None = None


@frozen(kw_only=True)
class RoomMemberLeft:
    TYPE: ClassVar[str] = "room_member_left"
    room: str
    user_id: str
    seq: int | None = None


@frozen(kw_only=True)
class RoomMessage:
    TYPE: ClassVar[str] = "room_message"
    room: str
    from_: str = field(metadata={"wire": "from"})
    data: Any
    seq: int | None = None


@frozen(kw_only=True)
class Presence:
    TYPE: ClassVar[str] = "presence"
    user_id: str
    status: UserStatus
    last_seen: int | None
    """Unix ms: now while online, when the last session ended once offline; None if never seen."""
    rid: str | None = None
    seq: int | None = None


@frozen(kw_only=True)
class Error:
    TYPE: ClassVar[str] = "error"
    code: ErrorCode
    message: str
    path: str | None = None
    rid: str | None = None
    seq: int | None = None


ClientMessage = (
    Hello
    | Ping
    | Bye
    | Ack
    | CallInitiate
    | CallAnswer
    | CallReject
    | CallInvite
    | CallJoin
    | Hangup
    | SdpOffer
    | SdpAnswer
    | IceCandidate
    | RoomJoin
    | RoomLeave
    | RoomBroadcast
    | PresenceSubscribe
    | PresenceUnsubscribe
    | PresenceSet
)
ServerMessage = (
    Welcome
    | IceServersUpdate
    | Pong
    | CallRinging
    | CallIncoming
    | CallAccepted
    | CallRejected
    | ParticipantJoined
    | ParticipantLeft
    | CallExpiring
    | CallEnded
    | RelayedSdpOffer
    | RelayedSdpAnswer
    | RelayedIceCandidate
    | RoomJoined
    | RoomLeft
    | RoomMemberJoined
    | RoomMemberLeft
    | RoomMessage
    | Presence
    | Error
)

CLIENT_MESSAGES: dict[str, type[ClientMessage]] = {cls.TYPE: cls for cls in ClientMessage.__args__}
SERVER_MESSAGES: dict[str, type[ServerMessage]] = {cls.TYPE: cls for cls in ServerMessage.__args__}
