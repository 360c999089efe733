"""The suite fails no correct server: asynchronous messages are skipped wherever a case is not
about them, cases a server's limits make impossible are skipped with the reason, and the
generated messages are the same from one run to the next."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest
import trio

from callbox.conformance.context import ASYNCHRONOUS
from callbox.conformance.generation import Generated
from callbox.conformance.registry import CASES
from callbox.conformance.report import table, to_json
from callbox.conformance.runner import Options, run_suite
from callbox.messages import CLIENT_MESSAGES, SERVER_MESSAGES
from tests.helpers import ADMIN_TOKEN, start_conformance_server, start_server

LIMITED = {
    "resume.after_much_traffic",
    "resume.history_gone",
    "timeouts.disconnected_after_grace",
}
"""The cases that need a call up longer than a 5 s cap allows (the default grace is 10 s)."""


def test_the_asynchronous_types_are_server_messages_and_watched_ones_among_them() -> None:
    assert set(SERVER_MESSAGES) >= ASYNCHRONOUS
    for case in CASES:
        assert case.watches <= ASYNCHRONOUS, case.id


@pytest.mark.slow
async def test_a_warning_right_after_every_answer_fails_no_case(nursery: trio.Nursery) -> None:
    """The issue's server: `call_expiring` comes as soon as a call is answered. Cases about
    something else skip it; those about it still check it."""
    url = await start_conformance_server(nursery, call_expiring_warning_ms=2999)
    report = await run_suite(url, Options(admin_token=ADMIN_TOKEN))
    failed = [f"{r.case.id}: {r.why}" for r in report.results if r.status == "fail"]
    assert failed == []
    assert report.tolerated()["call_expiring"] > 0
    assert orjson.loads(to_json(report))["messages"]["tolerated"] == dict(report.tolerated())
    assert "asynchronous messages skipped by cases not about them:" in table(report)
    status = {r.case.id: r.status for r in report.results}
    assert status["call.active.expiry_warning"] == status["call.active.max_duration"] == "pass"
    for result in report.results:
        if result.case.id.startswith("call.ringing.") and result.status == "skip":
            assert "still active" in result.why or "unreachable" in result.why
    assert report.traffic.invalid == 0


@pytest.mark.slow
async def test_a_short_cap_alone_passes_with_the_impossible_cases_skipped(
    nursery: trio.Nursery,
) -> None:
    """`MAX_CALL_DURATION_MS=5000 RING_TIMEOUT_MS=1000` and nothing else: the default warning
    shrinks to fit, and what needs a call longer than the cap is skipped, saying so."""
    url = await start_server(nursery, max_call_duration_ms=5000, ring_timeout_ms=1000)
    report = await run_suite(url, Options(skip=frozenset({"negative"})))
    failed = [f"{r.case.id}: {r.why}" for r in report.results if r.status == "fail"]
    assert failed == []
    limited = {r.case.id for r in report.results if "max_call_duration_ms 5000" in r.why}
    assert limited == LIMITED
    assert all(r.status == "skip" for r in report.results if r.case.id in LIMITED)


async def test_generated_messages_do_not_depend_on_the_suites_process() -> None:
    """Hypothesis draws some values from constants in the local modules imported so far, so the
    messages are made in a child that always imports the same ones: a run in this process (pytest
    and the server imported) spoils what a bare `python -m` makes, and two runs the same."""
    bare = subprocess.run(
        [sys.executable, "-m", "callbox.conformance.generation", "0", "2"],
        capture_output=True,
        check=True,
    ).stdout
    first, again = Generated(2, seed=0), Generated(2, seed=0)
    for tag in CLIENT_MESSAGES:
        assert await first.instances(tag) == await again.instances(tag) == orjson.loads(bare)[tag]
