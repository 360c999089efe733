"""What the core asks the I/O shell to do.

The core never touches a socket or a clock: it returns these, and the trio shell carries them out.
Timers are keyed so the shell can place them: a key with a ``call_id`` lives in that call's nursery
and dies with it; the others live with the session.
"""

from __future__ import annotations

from typing import Any

from attrs import frozen

from callbox.messages import EndReason

ConnId = int

# The WebSocket close codes the core closes a connection with (docs/protocol.md, "Close codes").
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_RESTART = 1012
CLOSE_AUTH_FAILED = 4001
CLOSE_TAKEN_OVER = 4002
CLOSE_HELLO_TIMEOUT = 4003
CLOSE_SESSION_TERMINATED = 4004
"""The deployer removed the user's sessions (the admin API): the client must not resume; a new
`hello` may start a new session (docs/decisions/0016-admin-api.md says why not 4003)."""


@frozen
class Send:
    """Write `frame` to connection `conn`: one server message, encoded (and numbered) by the core.

    The core encodes, as h11 returns bytes: what a session may have to replay is then bytes the
    allocator sizes exactly and the garbage collector never traverses, and a message sent to many
    sessions is serialized once.
    """

    conn: ConnId
    frame: bytes


@frozen
class Close:
    """Close connection `conn` with a WebSocket close code; the core has already forgotten it."""

    conn: ConnId
    code: int
    reason: str


@frozen
class OpenCall:
    """A call began: the shell opens its nursery, where the call's timers will run."""

    call_id: str


@frozen
class CloseCall:
    """A call ended: the shell cancels its nursery, and every timer of the call with it."""

    call_id: str
    reason: EndReason


@frozen
class RingTimer:
    """An invitee's ring timeout (a task in the call's nursery)."""

    call_id: str
    user_id: str


@frozen
class ExpiryWarningTimer:
    call_id: str


@frozen
class DurationCapTimer:
    call_id: str


@frozen
class HelloTimer:
    """How long a new connection may take to send `hello`."""

    conn: ConnId


@frozen
class HelloDelayTimer:
    """When a `hello` held back by the sign-in throttle is answered."""

    conn: ConnId


@frozen
class GraceTimer:
    """The reconnect grace period of a session whose connection was lost."""

    session_id: str


@frozen
class IceRefreshTimer:
    """When to push a session fresh TURN credentials."""

    session_id: str


CallTimer = RingTimer | ExpiryWarningTimer | DurationCapTimer
CALL_TIMERS = (RingTimer, ExpiryWarningTimer, DurationCapTimer)
"""The classes of `CallTimer`, for `isinstance`: these timers belong to a call's nursery."""
SessionTimer = HelloTimer | HelloDelayTimer | GraceTimer | IceRefreshTimer
TimerKey = CallTimer | SessionTimer


@frozen
class StartTimer:
    """Call `Switchboard.timer_fired(key, now)` at `deadline` (core clock, seconds)."""

    key: TimerKey
    deadline: float


@frozen
class CancelTimer:
    key: TimerKey


@frozen
class Numbered:
    """A frame a store shared by many nodes numbered in a session's sequence (cluster mode), for
    the node's gateway to write in `seq` order: `frame` carries its `seq`. `conn` is the
    session's connection, on whichever node holds it; None while it has none."""

    session_id: str
    conn: ConnId | None
    seq: int
    frame: bytes


@frozen
class ReplayAfter:
    """The session resumed on `conn`: send it, from the shared store, every frame after
    `last_seq` (cluster mode; a single process's store replays from the session's record)."""

    conn: ConnId
    session_id: str
    last_seq: int


@frozen
class Notify:
    """Tell the deployer's backend: a webhook event (docs/backend.md), which the shell signs
    and POSTs (server/webhooks.py) once the event that decided it has committed. The core
    emits only the types the config sends; the shell draws the event's id.

    `data` follows schemas/webhooks/<event_type>.json; `at_ms` is the Unix time, in ms, the
    event happened (the core's `wall`, as it reads no clock)."""

    event_type: str
    at_ms: int
    data: dict[str, Any]


Action = (
    Send | Close | OpenCall | CloseCall | StartTimer | CancelTimer | Numbered | ReplayAfter | Notify
)
