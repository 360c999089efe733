"""The conformance suite passes against our server, and covers the whole protocol."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import trio
import yaml

from callbox import messages
from callbox.conformance.cases.negative import mutants
from callbox.conformance.generation import generate
from callbox.conformance.registry import CASES, SECTIONS
from callbox.conformance.runner import Options, run_suite, select
from tests.helpers import (
    ADMIN_TOKEN,
    CONFORMANCE_SKIPPED,
    closed_port_url,
    start_conformance_server,
)

REPO = Path(__file__).resolve().parents[2]


def yaml_rows() -> set[str]:
    """`state.event` or `state.event.occupancy` for every transition of call-states.yaml."""
    spec = yaml.safe_load((REPO / "protocol" / "call-states.yaml").read_text())
    rows = set()
    for state, events in spec["call"]["transitions"].items():
        for event, outcome in events.items():
            if isinstance(outcome, dict):
                rows |= {f"{state}.{event}.{occupancy}" for occupancy in outcome}
            else:
                rows.add(f"{state}.{event}")
    return rows


@pytest.mark.slow
async def test_the_suite_passes_against_our_server(nursery: trio.Nursery) -> None:
    url = await start_conformance_server(nursery)
    report = await run_suite(url, Options(admin_token=ADMIN_TOKEN))
    failed = [f"{r.case.id}: {r.why}" for r in report.results if r.status == "fail"]
    assert failed == []
    assert {r.case.id for r in report.results if r.status == "skip"} == CONFORMANCE_SKIPPED
    assert len(report.results) == len(CASES)
    assert report.traffic.invalid == 0
    assert set(report.traffic.sent) == set(messages.CLIENT_MESSAGES)
    assert set(messages.SERVER_MESSAGES) - set(report.traffic.received) == {"ice_servers"}


async def test_the_admin_cases_skip_without_the_admin_token(nursery: trio.Nursery) -> None:
    url = await start_conformance_server(nursery)
    admin_cases = {"call.ringing.terminate", "call.active.terminate", "resume.terminated"}
    report = await run_suite(url, Options(only=frozenset({"states", "resume"})))
    skipped = {r.case.id: r.why for r in report.results if r.status == "skip"}
    for case_id in admin_cases:
        assert skipped[case_id] == "needs the server's admin API: run with --admin-token"
    assert [r.case.id for r in report.results if r.status == "fail"] == []


async def test_offline_ringing_cases_pass_against_a_server_with_a_webhook(
    nursery: trio.Nursery,
) -> None:
    """The receiver is down: the ring goes on regardless, and calls.end.offline skips."""
    down = closed_port_url().replace("ws://", "http://")
    secret = "whsec_" + "d" * 32
    url = await start_conformance_server(nursery, webhook_urls=(down,), webhook_secret=secret)
    report = await run_suite(url, Options(only=frozenset({"calls"})))
    outcome = {r.case.id: r.status for r in report.results if "offline" in r.case.id}
    assert outcome == {
        "calls.end.offline": "skip",
        "calls.offline_ringing.answer": "pass",
        "calls.offline_ringing.timeout": "pass",
    }
    assert [f"{r.case.id}: {r.why}" for r in report.results if r.status == "fail"] == []


def test_every_row_of_the_state_table_has_a_case() -> None:
    rows = {case.id.removeprefix("call.") for case in CASES if case.id.startswith("call.")}
    assert rows == yaml_rows()


def test_every_error_code_and_end_reason_is_covered() -> None:
    covered = set().union(*(case.covers for case in CASES))
    codes = {f"error:{code}" for code in typing.get_args(messages.ErrorCode)}
    reasons = {f"end:{reason}" for reason in typing.get_args(messages.EndReason)}
    assert codes | reasons <= covered
    assert covered <= codes | reasons  # no typo in a case's `covers`


def test_cases_are_named_documented_and_in_known_sections() -> None:
    assert len({case.id for case in CASES}) == len(CASES)
    for case in CASES:
        assert case.section in SECTIONS and case.doc, case.id
    assert {case.section for case in CASES} == set(SECTIONS)


def test_only_and_skip_select_sections() -> None:
    only = select(Options(only=frozenset({"relay", "glare"})))
    assert {case.section for case in only} == {"relay", "glare"}
    assert [case.section for case in only] == sorted(
        (case.section for case in only), key=SECTIONS.index
    )
    rest = select(Options(skip=frozenset({"timeouts", "negative"})))
    assert {case.section for case in rest} == set(SECTIONS) - {"timeouts", "negative"}


def test_generated_negative_messages_are_reproducible_and_all_invalid() -> None:
    first, again = generate("call_initiate", 5, seed=7), generate("call_initiate", 5, seed=7)
    assert first == again and len(first) == 5
    spoilt = list(mutants("call_initiate", first))
    assert {m.how.split()[0] for m in spoilt} >= {"drop", "add"}
    assert all(m.path.startswith("/") and m.wire["rid"] for m in spoilt)
