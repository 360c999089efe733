"""A rolling restart: three plain `callbox serve --redis` nodes drained (SIGTERM) and started
again one after the other under traffic; no call ends, no message is lost or repeated. The run is
bench/rolling_restart.py's, which prints the same figures on its own."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.cluster.redis_server import RedisServer

# The bench scripts import one another as top-level modules, as they do when run.
sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))
from rolling_restart import rolling_restart

pytestmark = [pytest.mark.redis, pytest.mark.slow]

CALLS = 20


async def test_a_rolling_restart_ends_no_call_and_loses_no_message(
    redis: RedisServer, tmp_path: Path
) -> None:
    outcome = await rolling_restart(redis.url, tmp_path, calls=CALLS, nodes=3)
    print(f"\n{outcome.report()}")  # the resume times: pytest -s shows them
    assert outcome.exit_statuses == [0, 0, 0], outcome.report()
    assert outcome.errors == [], outcome.report()
    assert outcome.ended_early == [] and outcome.sessions_lost == 0
    assert (outcome.duplicates, outcome.skipped, outcome.unread) == (0, 0, 0)
    assert outcome.read == outcome.sent > 0
    # Every session on a drained node resumed elsewhere, told by 1012 to move on at once.
    assert outcome.not_resumed == 0
    assert len(outcome.resume_s) >= 2 * CALLS  # each session was on one of the nodes drained
    assert set(outcome.close_codes) == {1012}, outcome.close_codes
