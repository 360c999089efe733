"""The one error model: everything the server refuses is a `SignalingError`.

Each refusal carries what the `error` reply needs (`code`, `message`, `path`), so whoever catches
one answers it the same way, whichever layer raised it: the codec (a frame that is not a valid
message), the switchboard (a message the current state does not allow), or the state table (an
event with no transition). A failure that is *not* a `SignalingError` is a bug in the server: the
switchboard answers it `internal` (see `Switchboard.receive`).
"""

from __future__ import annotations

from callbox.messages import ErrorCode

MAX_ERROR_TEXT = 1024
"""``maxLength`` of ``error.message`` and ``error.path`` in ``schemas/server/error.json``."""


class SignalingError(Exception):
    """A refusal the sender is told about with an `error`.

    `message` and `path` are cut to the bounds of `error`, so the reply is always valid.
    """

    def __init__(self, code: ErrorCode, message: str, path: str | None = None) -> None:
        if len(message) > MAX_ERROR_TEXT:
            message = message[: MAX_ERROR_TEXT - 3] + "..."
        while path is not None and len(path) > MAX_ERROR_TEXT:
            path = path.rsplit("/", 1)[0]  # drop the last segment: still a pointer, just coarser
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.path = path


class Refused(SignalingError):
    """A well-formed message the current state does not allow; nothing was changed."""


class IllegalTransition(Refused):
    """An event the state table has no transition for from the current state (`invalid_state`).

    The lookup itself changes nothing. An event that had already changed something before the
    miss is not rolled back: the core has no transactions yet.
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__("invalid_state", message, path)
