"""Importing this registers every case (the report orders them by section)."""

from callbox.conformance.cases import (
    calls,
    errors,
    group,
    negative,
    session,
    social,
    states,
    timeouts,
)

__all__ = ["calls", "errors", "group", "negative", "session", "social", "states", "timeouts"]
