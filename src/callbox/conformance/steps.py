"""Protocol steps the cases share, each checking every message the step makes the server send.

Checks are strict about what the protocol promises (who is told what, in which order on one
connection, with which fields and `rid`) and lenient about what it leaves open (the order of
user ids in a list, the order of messages on different connections).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import TypeVar

import attrs
import trio

from callbox.client import Client, ProtocolViolation
from callbox.codec import encode
from callbox.messages import (
    CallAccepted,
    CallEnded,
    CallIncoming,
    CallRinging,
    ClientMessage,
    Error,
    ErrorCode,
    IceCandidateInit,
    Limits,
    ParticipantJoined,
    Ping,
    Pong,
    RelayedSdpOffer,
    RoomJoined,
    RoomMemberJoined,
    SdpOffer,
    ServerMessage,
)

M = TypeVar("M", bound=ServerMessage)

SDP = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
CANDIDATE: IceCandidateInit = {
    "candidate": "candidate:842163049 1 udp 1677729535 192.0.2.7 46154 typ srflx",
    "sdpMid": "0",
    "sdpMLineIndex": 0,
    "usernameFragment": "EsBf",
}
EARLY_S = 0.05
"""A timer's message may come this much before the timer is due (clock granularity)."""

_rids = (f"r{n}" for n in itertools.count(1))


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ProtocolViolation(message)


def shown(*messages: ServerMessage) -> str:
    """Messages as the wire has them, for failure reports."""
    return ", ".join(encode(message).decode() for message in messages) or "nothing"


def users(clients: Iterable[Client]) -> list[str]:
    """The distinct user ids of `clients` (devices of one user count once), in order."""
    return list(dict.fromkeys(client.user_id for client in clients))


def same_users(what: str, actual: Iterable[str], expected: Iterable[str]) -> None:
    actual, expected = sorted(actual), sorted(expected)
    check(actual == expected, f"{what}: expected users {expected}, got {actual}")


async def refused(
    client: Client, code: ErrorCode, request: ClientMessage, **fields: object
) -> Error:
    """Sends `request` with a fresh `rid`; the answer must be `error` `code` echoing it."""
    request = attrs.evolve(request, rid=next(_rids))
    await client.send(request)
    return await client.expect(Error, code=code, rid=request.rid, **fields)


async def drain(client: Client) -> list[ServerMessage]:
    """Everything the server has sent `client` so far: what comes before the pong of a ping."""
    rid = next(_rids)
    await client.send(Ping(rid=rid))
    messages: list[ServerMessage] = []
    async for message in client:
        if isinstance(message, Pong) and message.rid == rid:
            return messages
        messages.append(message)
    raise ProtocolViolation(f"{client.connection.name}: the server closed the connection")


async def after(client: Client, started: float, ms: int, kind: type[M], **fields: object) -> M:
    """The message a server timer of `ms`, armed at `started`, sends: not before it is due."""
    message = await client.expect(kind, **fields)
    elapsed = trio.current_time() - started
    check(
        elapsed >= ms / 1000 - EARLY_S,
        f"{client.connection.name} got {kind.TYPE} after {elapsed:.3f} s, before its {ms} ms",
    )
    return message


# Calls -------------------------------------------------------------------------------------------


async def ring(caller: Client, devices: Sequence[Client], *, call_id: str | None = None) -> str:
    """`caller` calls the users of `devices`: it gets `call_ringing` (echoing `rid`) naming
    them, and each of their devices `call_incoming` with the roster: caller, then callees."""
    to = users(devices)
    call_id = await caller.initiate(to, call_id=call_id, rid="initiate")
    await _rung(caller, call_id, devices, caller, "initiate", roster=[caller.user_id, *to])
    return call_id


async def invite(member: Client, call_id: str, devices: Sequence[Client], caller: Client) -> None:
    """`member` invites the users of `devices` into `caller`'s call: like `ring`."""
    await member.invite(call_id, users(devices), rid="invite")
    await _rung(member, call_id, devices, caller, "invite")


async def _rung(
    requester: Client,
    call_id: str,
    devices: Sequence[Client],
    caller: Client,
    rid: str,
    *,
    roster: list[str] | None = None,
) -> None:
    ringing = await requester.expect(CallRinging, call_id=call_id, rid=rid)
    same_users("call_ringing.to", ringing.to, users(devices))
    for device in devices:
        await incoming(device, call_id, caller, roster=roster)


async def incoming(
    device: Client, call_id: str, caller: Client, *, roster: list[str] | None = None
) -> CallIncoming:
    """`device` rings for `call_id`, from `caller`, within the ring timeout; its
    `participants` are `roster` if given (everyone joined or rung, in the order they came)."""
    message = await device.expect(CallIncoming, call_id=call_id, from_=caller.user_id)
    if roster is None:
        check(
            {caller.user_id, device.user_id} <= set(message.participants),
            f"call_incoming.participants {message.participants} lacks the caller or the callee",
        )
    else:
        check(
            message.participants == roster,
            f"call_incoming.participants is {message.participants}, expected {roster}",
        )
    check(
        0 < message.expires_in_ms <= device.limits.ring_timeout_ms,
        f"call_incoming.expires_in_ms {message.expires_in_ms} is not within the ring timeout",
    )
    return message


async def answer(
    callee: Client, call_id: str, joined: Sequence[Client], *, join: bool = False
) -> None:
    """`callee` answers (or with `join`, joins): it and everyone `joined` get `call_accepted`
    by it with the new participants, and if the call was active, those get
    `participant_joined` next."""
    if join:
        await callee.join(call_id, rid="answer")
    else:
        await callee.answer(call_id, rid="answer")
    participants = users([*joined, callee])
    for client in (callee, *joined):
        rid = "answer" if client is callee else None
        accepted = await client.expect(CallAccepted, call_id=call_id, by=callee.user_id, rid=rid)
        same_users("call_accepted.participants", accepted.participants, participants)
    if len(joined) >= 2:
        for client in joined:
            await client.expect(ParticipantJoined, call_id=call_id, user_id=callee.user_id)


async def call(caller: Client, *callees: Client) -> str:
    """A call between `caller` and `callees`, each of whom has answered in turn."""
    call_id = await ring(caller, callees)
    for index, callee in enumerate(callees):
        await answer(callee, call_id, [caller, *callees[:index]])
    return call_id


async def ended(clients: Iterable[Client], call_id: str, reason: str, **fields: object) -> None:
    for client in clients:
        await client.expect(CallEnded, call_id=call_id, reason=reason, **fields)


# What state a call is in, as a client can tell ---------------------------------------------------


async def relays(sender: Client, receiver: Client, call_id: str) -> None:
    """An offer from `sender` reaches `receiver` with `from` set: the call is active."""
    await sender.offer(call_id, receiver.user_id, SDP)
    await receiver.expect(RelayedSdpOffer, call_id=call_id, from_=sender.user_id, sdp=SDP)


async def is_ringing(member: Client, call_id: str, to: Client) -> None:
    """A joined party's relay is refused with `invalid_state`: the call is ringing."""
    await refused(member, "invalid_state", SdpOffer(call_id=call_id, to=to.user_id, sdp=SDP))


async def is_ended(client: Client, call_id: str, peer: Client) -> None:
    """A relay about the call is refused with `invalid_state`: it is over for `client`."""
    await refused(client, "invalid_state", SdpOffer(call_id=call_id, to=peer.user_id, sdp=SDP))


# Rooms -------------------------------------------------------------------------------------------


async def enter_room(
    client: Client, room: str, members: list[Client], **fields: object
) -> RoomJoined:
    """`client` joins `room`, where the devices `members` are: `room_joined` (echoing `rid`)
    lists the users; if the user is new there, every device of the others is told."""
    await client.room_join(room, rid="join")
    joined = await client.expect(RoomJoined, room=room, rid="join", **fields)
    same_users("room_joined.members", joined.members, {c.user_id for c in (*members, client)})
    if client.user_id not in {member.user_id for member in members}:
        for member in members:
            await member.expect(RoomMemberJoined, room=room, user_id=client.user_id)
    return joined


# Pacing -------------------------------------------------------------------------------------------


class Pacer:
    """Keeps one connection under the server's message rate: half the burst at once, then
    80 % of the sustained rate, so a long series of messages is never `rate_limited`."""

    def __init__(self, limits: Limits) -> None:
        self.rate = max(1, limits.messages_per_second) * 0.8
        self.allowance = max(1, limits.message_burst // 2)
        self.tokens = float(self.allowance)
        self.updated = trio.current_time()

    async def tick(self) -> None:
        """Waits until one more message may be sent."""
        now = trio.current_time()
        self.tokens = min(self.allowance, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1:
            await trio.sleep((1 - self.tokens) / self.rate)
            self.tokens, self.updated = 1.0, trio.current_time()
        self.tokens -= 1
