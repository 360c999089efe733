"""Which server each connection goes to when the suite is given several URLs (the nodes of one
cluster): a random one of them, so that the cases prove what a cluster promises, that any node
serves any session and a session resumes on any node.

Each case draws from a generator of its own, seeded by the run's `--seed` and the case's id.
Cases run several at a time, so a single generator shared by the run would hand URLs out in an
order that depends on scheduling; one per case sends the case's connections (its first, its
second, its resumes) to the same URLs whenever it runs with that seed and those URLs, whatever
runs beside it, so `--only SECTION --seed N` reproduces a failure.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence


class Spread:
    """The URLs one case's connections go to, drawn in turn; `used` counts them for the run."""

    def __init__(self, urls: Sequence[str], seed: int, case_id: str, used: Counter[str]) -> None:
        self.urls = tuple(urls)
        self._random = random.Random(f"{seed}/{case_id}")
        """A string seed is hashed with SHA-512 (not `hash`): the same in every process."""
        self._used = used

    def next(self) -> str:
        """The URL of the case's next connection, a new one or a resume."""
        url = self.urls[0] if len(self.urls) == 1 else self._random.choice(self.urls)
        self._used[url] += 1
        return url
