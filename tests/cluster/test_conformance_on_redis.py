"""The conformance suite against three `callbox serve --redis` processes on one `redis-server`,
its connections spread over the three (issue 12: "it passes against three nodes on one Redis").

The nodes run with the short timers and small limits of the suite's own test (`SHORT_LIMITS`),
so every case runs; they skip what they skip against a single process, nothing more.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest

from callbox.conformance.registry import CASES
from callbox.conformance.runner import Options, run_suite
from tests.cluster.redis_server import RedisServer, needs_redis_server
from tests.helpers import ADMIN_TOKEN, CONFORMANCE_SKIPPED, SHORT_LIMITS, serve_process

pytestmark = [pytest.mark.redis, pytest.mark.slow, needs_redis_server]

NODES = 3


async def test_the_suite_passes_against_three_nodes_on_one_redis(redis: RedisServer) -> None:
    env = {name.upper(): str(value) for name, value in SHORT_LIMITS.items()}
    async with AsyncExitStack() as nodes:
        urls = [
            (
                await nodes.enter_async_context(
                    serve_process(CALLBOX_REDIS_URL=redis.url, ADMIN_TOKEN=ADMIN_TOKEN, **env)
                )
            ).url
            for _ in range(NODES)
        ]
        report = await run_suite(urls, Options(admin_token=ADMIN_TOKEN))
    failed = [f"{r.case.id}: {r.why}" for r in report.results if r.status == "fail"]
    assert failed == []
    assert {r.case.id for r in report.results if r.status == "skip"} == CONFORMANCE_SKIPPED
    assert len(report.results) == len(CASES)
    assert report.traffic.invalid == 0
    assert len(set(report.nodes)) == NODES
    assert set(report.connections) == set(urls)
