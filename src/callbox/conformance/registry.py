"""The cases of the suite: what each is called, which section it belongs to, what it covers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from attrs import frozen

if TYPE_CHECKING:
    from callbox.conformance.context import Context

SECTIONS = (
    "connection",
    "resume",
    "states",
    "calls",
    "glare",
    "devices",
    "relay",
    "group",
    "rooms",
    "presence",
    "errors",
    "negative",
    "timeouts",
)
"""In report order. `timeouts` holds every case that waits for a server timer, whatever it is
about, so `--skip timeouts` leaves a run that takes seconds."""

CaseFunction = Callable[["Context"], Awaitable[str | None]]
"""Runs the case; raises on failure (or `Skip`); may return a note for the report."""


class Skip(Exception):
    """The case cannot run against this server; the message says why."""


@frozen
class Case:
    id: str
    section: str
    run: CaseFunction
    covers: frozenset[str] = frozenset()
    """Protocol items this case checks, e.g. ``error:call_full`` or ``end:merged``: a test
    proves every error code and every end reason is covered by some case."""
    watches: frozenset[str] = frozenset()
    """Asynchronous message types (`context.ASYNCHRONOUS`) this case checks: its clients get
    them like any other message instead of skipping them."""

    @property
    def doc(self) -> str:
        """What the case checks: its function's docstring, on one line."""
        return " ".join((self.run.__doc__ or "").split())


CASES: list[Case] = []
"""Every case, in registration order (see `cases/__init__.py`)."""


def case(
    id: str, section: str, *, covers: tuple[str, ...] = (), watches: tuple[str, ...] = ()
) -> Callable[[CaseFunction], CaseFunction]:
    """Registers the decorated function as case `id`."""

    def register(run: CaseFunction) -> CaseFunction:
        add(
            Case(
                id=id,
                section=section,
                run=run,
                covers=frozenset(covers),
                watches=frozenset(watches),
            )
        )
        return run

    return register


def add(new: Case) -> None:
    """Registers a case built in code (one per message type, say)."""
    if new.section not in SECTIONS:
        raise ValueError(f"case {new.id}: unknown section {new.section!r}")
    if any(existing.id == new.id for existing in CASES):
        raise ValueError(f"case {new.id} registered twice")
    CASES.append(new)
