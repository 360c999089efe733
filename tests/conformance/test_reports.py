"""The command line: exit status, `--only`/`--skip`, `--json` and `--junit`; and what a
deliberately broken server gets."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import attrs
import orjson
import pytest
import trio

from callbox.__main__ import main
from callbox.core.outbox import Outbox
from callbox.core.sessions import Session
from callbox.messages import CallEnded, Error, ServerMessage
from tests.helpers import start_conformance_server

Breakage = Callable[[ServerMessage], list[ServerMessage]]


async def conformance(*argv: str) -> int:
    """`callbox conformance …`, in a thread of its own (it runs its own trio loop)."""
    return await trio.to_thread.run_sync(main, ["conformance", *argv])


def lines_of(out: str) -> dict[str, list[str]]:
    """The report's rows by case id: [section, result, time, why…]."""
    rows = [line.split() for line in out.splitlines()]
    return {row[0]: row[1:] for row in rows if len(row) >= 4 and row[2] in {"pass", "fail", "skip"}}


async def test_only_skip_json_and_junit(
    nursery: trio.Nursery, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = await start_conformance_server(nursery)
    json_file, junit_file = tmp_path / "report.json", tmp_path / "report.xml"
    code = await conformance(
        url, "--only", "connection,errors", "--skip", "errors",
        "--json", str(json_file), "--junit", str(junit_file),
    )  # fmt: skip
    assert code == 0
    rows = lines_of(capsys.readouterr().out)
    assert rows and {row[0] for row in rows.values()} == {"connection"}
    report = orjson.loads(json_file.read_bytes())
    assert report["summary"] == {"cases": len(rows), "pass": len(rows), "fail": 0, "skip": 0}
    assert {case["id"] for case in report["cases"]} == set(rows)
    assert all(case["checks"] and case["status"] == "pass" for case in report["cases"])
    assert report["options"]["only"] == ["connection", "errors"]
    assert report["messages"]["invalid"] == 0 and report["messages"]["received"]["welcome"] > 0
    suites = ET.parse(junit_file).getroot()
    assert (suites.tag, suites.get("tests"), suites.get("failures")) == (
        "testsuites",
        str(len(rows)),
        "0",
    )
    (suite,) = suites
    assert suite.get("name") == "connection"
    assert {case.get("name") for case in suite.iter("testcase")} == set(rows)


async def test_skips_are_reported_in_every_form(
    nursery: trio.Nursery, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = await start_conformance_server(nursery, ring_timeout_ms=5000, max_call_duration_ms=20_000)
    json_file, junit_file = tmp_path / "report.json", tmp_path / "report.xml"
    code = await conformance(
        url, "--only", "timeouts", "--max-wait", "2", "--json", str(json_file),
        "--junit", str(junit_file),
    )  # fmt: skip
    assert code == 0
    rows = lines_of(capsys.readouterr().out)
    assert rows["timeouts.ring_timeout"][1] == "skip"
    assert "ring_timeout_ms is 5000 ms, more than --max-wait 2 s" in " ".join(
        rows["timeouts.ring_timeout"]
    )
    assert rows["timeouts.disconnected_after_grace"][1] == "pass"  # 1 s grace: within 2 s
    by_id = {c["id"]: c for c in orjson.loads(json_file.read_bytes())["cases"]}
    assert by_id["call.active.max_duration"]["status"] == "skip"
    skipped = ET.parse(junit_file).getroot().find(".//testcase[@name='timeouts.ring_timeout']")
    assert skipped is not None and skipped.find("skipped") is not None


async def test_usage_and_unreachable_servers(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["conformance", "ws://127.0.0.1:1/ws", "--only", "calls,nonsense"])
    assert exited.value.code == 2
    assert "unknown section nonsense" in capsys.readouterr().err
    assert await conformance("ws://127.0.0.1:1/ws") == 2
    assert "no session at ws://127.0.0.1:1/ws" in capsys.readouterr().err


async def test_a_server_that_requires_tokens_cannot_be_checked(
    nursery: trio.Nursery, capsys: pytest.CaptureFixture[str]
) -> None:
    url = await start_conformance_server(nursery, jwt_secret="s" * 32)
    assert await conformance(url) == 2
    assert "needs a server in development mode" in capsys.readouterr().err


# Deliberately broken servers ----------------------------------------------------------------------


def ended_twice(message: ServerMessage) -> list[ServerMessage]:
    return [message, message] if isinstance(message, CallEnded) else [message]


def errors_without_rid(message: ServerMessage) -> list[ServerMessage]:
    return [attrs.evolve(message, rid=None) if isinstance(message, Error) else message]


def busy_called_rejected(message: ServerMessage) -> list[ServerMessage]:
    if isinstance(message, CallEnded) and message.reason == "busy":
        return [attrs.evolve(message, reason="rejected")]
    return [message]


class Broken(NamedTuple):
    """A server breaking one rule, and what the suite must say about it."""

    breakage: Breakage
    only: str
    failing: str
    why: str


BROKEN = [
    Broken(ended_twice, "calls", "calls.end.offline", "expected pong {ts: None, rid: None}, got"),
    Broken(
        errors_without_rid, "relay", "relay.unknown_call", "expected error {code: 'unknown_call'"
    ),
    Broken(busy_called_rejected, "calls", "calls.end.busy_rejected", "reason: 'busy'"),
]


@pytest.mark.parametrize("broken", BROKEN, ids=lambda broken: broken.breakage.__name__)
async def test_a_broken_server_fails_the_right_case(
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    broken: Broken,
) -> None:
    send = Outbox.send

    def broken_send(self: Outbox, session: Session, message: ServerMessage) -> None:
        for sent in broken.breakage(message):
            send(self, session, sent)

    monkeypatch.setattr(Outbox, "send", broken_send)
    url = await start_conformance_server(nursery)
    assert await conformance(url, "--only", broken.only) == 1
    out = capsys.readouterr().out
    row = lines_of(out)[broken.failing]
    assert row[1] == "fail", out
    assert broken.why in " ".join(row[3:]), row
    assert "0 failed" not in out


async def test_a_server_sending_invalid_messages_fails(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The relayed offer loses its `from`: every message is checked against the schemas."""
    from callbox.core import outbox  # noqa: PLC0415

    encode = outbox.encode

    def without_from(message: ServerMessage, *, seq: int | None = None) -> bytes:
        wire = orjson.loads(encode(message, seq=seq))
        if wire["type"] == "sdp_offer":
            del wire["from"]
        return orjson.dumps(wire)

    monkeypatch.setattr(outbox, "encode", without_from)
    url = await start_conformance_server(nursery)
    assert await conformance(url, "--only", "relay") == 1
    out = capsys.readouterr().out
    rows = lines_of(out)
    assert rows["relay.in_order"][1] == "fail"
    assert "got an invalid message (/from: required field is missing)" in out
    assert "INVALID" in out
