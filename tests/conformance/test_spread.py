"""The suite given several URLs: each connection goes to a random one, drawn per case from the
run's seed, so that a seed sends a case's connections to the same URLs again; with one URL,
every connection goes there."""

from __future__ import annotations

from collections import Counter

import orjson
import pytest
import trio

from callbox.cluster.backend import MemoryBackend
from callbox.config import Config
from callbox.conformance.report import table, to_json
from callbox.conformance.runner import Options, SuiteAborted, run_suite
from callbox.conformance.spread import Spread
from callbox.server.cluster import MemoryBus, serve_node
from tests.helpers import SHORT_LIMITS, server_url, start_conformance_server

URLS = ("ws://a.test/ws", "ws://b.test/ws", "ws://c.test/ws")


def draws(seed: int, case_id: str, count: int = 20, urls: tuple[str, ...] = URLS) -> list[str]:
    spread = Spread(urls, seed, case_id, Counter())
    return [spread.next() for _ in range(count)]


def test_a_seed_draws_the_same_urls_for_a_case_every_time() -> None:
    assert draws(0, "resume.replay") == draws(0, "resume.replay")
    assert draws(7, "resume.replay") == draws(7, "resume.replay")


def test_the_draws_depend_on_the_seed_and_on_the_case() -> None:
    assert draws(0, "resume.replay") != draws(1, "resume.replay")
    assert draws(0, "resume.replay") != draws(0, "resume.takeover")


def test_a_case_draws_the_same_whatever_other_cases_draw_meanwhile() -> None:
    """Cases run several at a time: one case's draws must not depend on the others'."""
    used: Counter[str] = Counter()
    first, second = Spread(URLS, 3, "one", used), Spread(URLS, 3, "two", used)
    interleaved = [(first.next(), second.next()) for _ in range(20)]
    assert [a for a, _ in interleaved] == draws(3, "one")
    assert [b for _, b in interleaved] == draws(3, "two")
    assert used.total() == 40


def test_every_url_is_drawn_and_counted() -> None:
    used: Counter[str] = Counter()
    for case_id in ("a", "b", "c", "d"):
        spread = Spread(URLS, 0, case_id, used)
        for _ in range(10):
            spread.next()
    assert set(used) == set(URLS)
    assert used.total() == 40


def test_one_url_gets_every_connection() -> None:
    assert draws(5, "any", urls=URLS[:1]) == [URLS[0]] * 20


async def start_nodes(nursery: trio.Nursery, count: int) -> list[str]:
    """`count` nodes of one cluster in this process, with the suite's short limits."""
    backend, bus = MemoryBackend(), MemoryBus()
    config = Config(port=0).with_overrides(**SHORT_LIMITS)
    return [server_url(await nursery.start(serve_node, config, backend, bus)) for _ in range(count)]


async def test_the_suite_spreads_its_connections_and_resumes_over_the_nodes(
    nursery: trio.Nursery,
) -> None:
    """Two nodes of a cluster in this process: sessions move between them as they resume."""
    urls = await start_nodes(nursery, 2)
    report = await run_suite(urls, Options(only=frozenset({"connection", "resume"})))
    failed = [f"{r.case.id}: {r.why}" for r in report.results if r.status == "fail"]
    assert failed == []
    assert report.urls == tuple(urls)
    assert set(report.connections) == set(urls)
    assert len(set(report.nodes)) == 2
    assert f"connections spread by seed 0: {report.connections[urls[0]]} to {urls[0]}" in table(
        report
    )
    written = orjson.loads(to_json(report))
    assert written["urls"] == urls and written["url"] == urls[0]
    assert written["connections"] == dict(report.connections)


async def test_one_url_reports_as_before(nursery: trio.Nursery) -> None:
    url = await start_conformance_server(nursery)
    report = await run_suite(url, Options(only=frozenset({"connection"})))
    assert report.urls == (url,) and report.nodes == (None,)
    assert set(report.connections) == {url}
    assert "connections spread" not in table(report)


async def test_servers_announcing_different_limits_are_refused(nursery: trio.Nursery) -> None:
    """The cases size and time themselves by the limits: they must be the same everywhere."""
    first = await start_conformance_server(nursery)
    second = await start_conformance_server(nursery, ring_timeout_ms=2000)
    with pytest.raises(SuiteAborted, match=f"ring_timeout_ms 1000 at {first}, 2000 at {second}"):
        await run_suite([first, second], Options(only=frozenset({"connection"})))
