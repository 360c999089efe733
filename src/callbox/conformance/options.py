"""How a run goes: the `callbox conformance` flags (kept import-light for `--help`)."""

from __future__ import annotations

import attrs
from attrs import frozen


@frozen
class Options:
    only: frozenset[str] = frozenset()
    """Sections to run; empty: all of them."""
    skip: frozenset[str] = frozenset()
    max_wait: float = 15.0
    """Longest server timer (seconds) a case may wait for; a longer one skips the case."""
    examples: int = 3
    """Generated instances per client message type in the negative section."""
    seed: int = 0
    """Seed of the negative section's generator, and of the URL each connection goes to when
    there are several (`spread.Spread`), so that a run can be reproduced."""
    jobs: int = 4
    """Cases run at once."""
    case_timeout: float = 10.0
    """Seconds a case may take, on top of the server timers it waits for."""
    admin_token: str | None = attrs.field(default=None, repr=False)
    """The server's `ADMIN_TOKEN`: the cases that end calls and sessions through its admin API
    run with it, and skip (saying so) without it."""
