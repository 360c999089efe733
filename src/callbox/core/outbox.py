"""What the event being handled asks of the shell: frames to send, connections to close, timers.

Every module of the core writes here, and the switchboard hands the lot to the shell at the end
of the event, in the order it was decided. A message for a session is numbered in the session's
sequence and kept for replay by `Session.deliver`; one that is not (`welcome`, `pong`, an `error`
before `hello`) is sent as it is.
"""

from __future__ import annotations

from collections import Counter

from attrs import define, field

from callbox.codec import encode, with_seq
from callbox.core.actions import Action, CancelTimer, Close, ConnId, Send, StartTimer, TimerKey
from callbox.core.sessions import ReplayOverflow, Session
from callbox.messages import Error, ErrorCode, ServerMessage


@define(eq=False)
class Outbox:
    actions: list[Action] = field(factory=list, init=False)
    """This event's actions, in order."""
    overflowed: list[Session] = field(factory=list, init=False)
    """Sessions whose replay overflowed while they were away: the switchboard ends them once the
    event's own work is done, so ending one never happens in the middle of another change."""
    errors: Counter[str] = field(factory=Counter, init=False)
    """`error` messages sent, by code (for metrics)."""
    _encoded: ServerMessage | None = field(default=None, init=False)
    """The message last sent: it is immutable, so it is sent to the next session (a broadcast,
    `call_ended` to every party) without being encoded again."""
    _unnumbered: bytes = field(default=b"", init=False)
    """`_encoded`, encoded without `seq`: each session's frame splices its own `seq` in."""

    def begin(self) -> None:
        self.actions = []

    def send(self, session: Session, message: ServerMessage) -> None:
        """Number `message` in `session`'s sequence and send it (or keep it, if it is away)."""
        if message is not self._encoded:  # else the same to another session: a room broadcast
            self._encoded, self._unnumbered = message, encode(message)
        try:
            send = session.deliver(with_seq(self._unnumbered, session.next_seq))
        except ReplayOverflow:
            self.overflowed.append(session)
            return
        if send is not None:
            self.actions.append(send)

    def send_unnumbered(self, conn: ConnId, message: ServerMessage) -> None:
        """Send outside the session's sequence: not replayed (`welcome`, `pong`, `error`s
        before `hello`)."""
        self.actions.append(Send(conn, encode(message)))

    def error(
        self,
        to: Session | ConnId,
        code: ErrorCode,
        message: str,
        path: str | None,
        rid: str | None,
    ) -> None:
        """Answer a client with an `error`: numbered in its session's sequence, or to its
        connection (`to`) as it is if it has no session yet."""
        error = Error(code=code, message=message, path=path, rid=rid)
        self.errors[code] += 1
        if isinstance(to, Session):
            self.send(to, error)
        else:
            self.send_unnumbered(to, error)

    def close(self, conn: ConnId, code: int, reason: str) -> None:
        self.actions.append(Close(conn, code, reason))

    def start_timer(self, key: TimerKey, deadline: float) -> None:
        self.actions.append(StartTimer(key, deadline))

    def cancel_timer(self, key: TimerKey) -> None:
        self.actions.append(CancelTimer(key))
