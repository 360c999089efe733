"""What the event being handled decides: messages for sessions, frames for connections, closes,
timers, and the changes to this process's connections that wait for the event's commit.

Every module of the core writes here, and the switchboard hands the lot to the shell at the end
of the event, in the order it was decided. A message for a session is a `Delivery`: encoded once,
not yet numbered; the store numbers it in the session's sequence (and keeps it for replay) only
when the event commits, so an event rolled back or run again has numbered nothing. One that is not
for a session's sequence (`welcome`, `pong`, an `error` before `hello`) is a `Send` as it is.

A `Delivery` is a plain tuple, the one kind of action that is: most of the traffic is one
delivery per event, and a tuple costs no constructor call (`type(action) is tuple` finds them).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from attrs import define, field

from callbox.codec import encode
from callbox.core.actions import (
    Action,
    CancelTimer,
    Close,
    ConnId,
    Notify,
    Send,
    StartTimer,
    TimerKey,
)
from callbox.messages import Error, ErrorCode, ServerMessage

Delivery = tuple[str, bytes]
"""(session id, frame encoded without `seq`): numbered in the session's sequence at commit."""


@define(eq=False)
class Outbox:
    actions: list[Action | Delivery] = field(factory=list, init=False)
    """This event's actions and deliveries, in order."""
    after_commit: list[Callable[[], object]] = field(factory=list, init=False)
    """Changes to this process's connections (`Link`s), made once the event commits: an event
    that is rolled back and run again must find them as they were."""
    applied: tuple[str, int] | None = field(default=None, init=False)
    """(session id, `cseq`) of the numbered client message this event applies, if it is one."""
    errors: Counter[str] = field(factory=Counter, init=False)
    """`error` messages sent, by code (for metrics): counted when their event commits."""
    error_codes: list[str] = field(factory=list, init=False)
    """The codes of this event's `error`s, until it commits."""
    _encoded: ServerMessage | None = field(default=None, init=False)
    """The message last sent: it is immutable, so it is sent to the next session (a broadcast,
    `call_ended` to every party) without being encoded again."""
    _unnumbered: bytes = field(default=b"", init=False)
    """`_encoded`, encoded without `seq`: each session's frame splices its own `seq` in."""

    def begin(self) -> None:
        """A new event: nothing decided yet (what the last one decided has been taken)."""
        self.actions = []

    def discard(self) -> None:
        """The event is rolled back: nothing it decided happens."""
        self.actions = []
        self.after_commit = []
        self.error_codes = []
        self.applied = None

    def count_errors(self) -> None:
        """The event committed: its errors count."""
        for code in self.error_codes:
            self.errors[code] += 1
        self.error_codes = []

    def send(self, session_id: str, message: ServerMessage) -> None:
        """Send `message` to the session, numbered in its sequence when the event commits."""
        if message is not self._encoded:  # else the same to another session: a room broadcast
            self._encoded, self._unnumbered = message, encode(message)
        self.actions.append((session_id, self._unnumbered))

    def send_unnumbered(self, conn: ConnId, message: ServerMessage) -> None:
        """Send outside the session's sequence: not replayed (`welcome`, `pong`, `error`s
        before `hello`)."""
        self.actions.append(Send(conn, encode(message)))

    def error(
        self,
        to: str | ConnId,
        code: ErrorCode,
        message: str,
        path: str | None,
        rid: str | None,
    ) -> None:
        """Answer a client with an `error`: numbered in the sequence of its session (`to`, a
        session id), or to its connection (`to`, a `ConnId`) as it is if it has no session yet."""
        error = Error(code=code, message=message, path=path, rid=rid)
        self.error_codes.append(code)
        if isinstance(to, str):
            self.send(to, error)
        else:
            self.send_unnumbered(to, error)

    def close(self, conn: ConnId, code: int, reason: str) -> None:
        self.actions.append(Close(conn, code, reason))

    def start_timer(self, key: TimerKey, deadline: float) -> None:
        self.actions.append(StartTimer(key, deadline))

    def cancel_timer(self, key: TimerKey) -> None:
        self.actions.append(CancelTimer(key))

    def notify(self, event_type: str, at_ms: int, data: dict[str, Any]) -> None:
        """Tell the deployer's backend (a webhook event), once the event commits."""
        self.actions.append(Notify(event_type, at_ms, data))
