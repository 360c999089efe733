"""The admin API over real HTTP, against a real server with real WebSocket clients.

Every request is a real HTTP/1.1 request on 127.0.0.1; what the parties see arrives on their
real sockets (protocol/openapi.yaml is the contract: tests/server/test_admin_openapi.py runs
it property by property)."""

from __future__ import annotations

import logging

import orjson
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from callbox.core.calls import Calling
from tests.helpers import (
    ADMIN_TOKEN,
    accepted_call,
    admin_request,
    http_request,
    start_server,
)

from .wsclient import connect

TOKEN = ADMIN_TOKEN
AUTH = [("Authorization", f"Bearer {TOKEN}")]
admin = admin_request


async def closed_with(client_ws: WebSocketConnection) -> int | None:
    """The close code the server sent, once the socket is closed."""
    with trio.fail_after(5):
        try:
            while True:
                await client_ws.get_message()
        except ConnectionClosed as closed:
            return closed.reason.code
    return None


async def test_a_call_is_listed_read_and_terminated(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    url = await start_server(nursery, admin_token=TOKEN)
    async with connect(url, "alice") as alice, connect(url, "bob") as bob:
        await accepted_call(alice, bob)
        listed = await admin(url, "GET", "/api/v1/calls")
        assert listed.status == 200 and listed.fields["content-type"] == "application/json"
        (call,) = orjson.loads(listed.body)["calls"]
        assert call["call_id"] == "call-0001" and call["state"] == "active"
        assert [party["user_id"] for party in call["parties"]] == ["alice", "bob"]
        by_user = orjson.loads((await admin(url, "GET", "/api/v1/calls?user=bob")).body)
        assert [c["call_id"] for c in by_user["calls"]] == ["call-0001"]
        nobody = orjson.loads((await admin(url, "GET", "/api/v1/calls?user=carol")).body)
        assert nobody == {"calls": [], "truncated": False}
        one = orjson.loads((await admin(url, "GET", "/api/v1/calls/call-0001")).body)
        assert {**one, "ends_in_ms": 0} == {**call, "ends_in_ms": 0}  # a few ms later
        assert 0 < one["ends_in_ms"] <= 3_600_000
        with caplog.at_level(logging.INFO, logger="callbox.admin"):
            ended = await admin(url, "DELETE", "/api/v1/calls/call-0001")
        assert ended.status == 204 and ended.body == b"" and "content-length" not in ended.fields
        await alice.expect("call_ended", call_id="call-0001", reason="terminated")
        await bob.expect("call_ended", call_id="call-0001", reason="terminated")
        assert "call call-0001 terminated, asked by 127.0.0.1" in caplog.text
        gone = await admin(url, "GET", "/api/v1/calls/call-0001")
        assert gone.status == 404
        assert orjson.loads(gone.body)["error"] == "unknown_call"
        again = await admin(url, "DELETE", "/api/v1/calls/call-0001")
        assert again.status == 404
        # The parties are free: a new call goes through.
        await accepted_call(alice, bob, "call-0002")


async def test_removing_a_user_closes_its_sockets_with_4004_and_ends_its_calls(
    nursery: trio.Nursery,
) -> None:
    url = await start_server(nursery, admin_token=TOKEN)
    async with connect(url, "alice") as alice, connect(url, "bob") as bob:
        async with connect(url, "bob") as bob_laptop:
            await accepted_call(alice, bob)
            await bob_laptop.expect("call_incoming")
            await bob_laptop.expect("call_ended", reason="answered_elsewhere")
            user = orjson.loads((await admin(url, "GET", "/api/v1/users/bob")).body)
            assert user["status"] == "in_call" and user["calls"] == ["call-0001"]
            assert [s["connected"] for s in user["sessions"]] == [True, True]
            removed = await admin(url, "DELETE", "/api/v1/users/bob/sessions")
            assert removed.status == 204
            await alice.expect("call_ended", reason="terminated", by="bob")
            assert await closed_with(bob.ws) == 4004
            assert await closed_with(bob_laptop.ws) == 4004
        assert (await admin(url, "GET", "/api/v1/users/bob")).status == 404
        assert (await admin(url, "DELETE", "/api/v1/users/bob/sessions")).status == 404
        stats = orjson.loads((await admin(url, "GET", "/api/v1/stats")).body)
        assert (stats["sessions"], stats["calls"]) == (1, 0)
        token = bob.welcome["resume_token"]
        async with connect(url) as again:
            await again.send({"type": "hello", "user_id": "bob", "resume": token, "last_seq": 2})
            await again.expect("welcome", resumed=False)


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token-wrong-token-wrong-token", f"Basic {TOKEN}", f"Bearer {TOKEN}x"],
)
async def test_a_wrong_or_missing_token_gets_401_and_no_detail(
    nursery: trio.Nursery, authorization: str | None
) -> None:
    url = await start_server(nursery, admin_token=TOKEN)
    headers = [] if authorization is None else [("Authorization", authorization)]
    for method, path in [
        ("GET", "/api/v1/calls"),
        ("DELETE", "/api/v1/calls/x"),
        ("GET", "/api/v2"),
    ]:
        result = await http_request(url, path, method=method, headers=headers)
        assert result.status == 401
        assert result.fields["www-authenticate"] == "Bearer"
        assert orjson.loads(result.body) == {
            "error": "unauthorized",
            "message": "a bearer token is required",
        }


async def test_without_a_token_the_admin_api_is_not_there(nursery: trio.Nursery) -> None:
    url = await start_server(nursery)
    for method in ("GET", "DELETE"):
        result = await admin(url, method, "/api/v1/calls")
        assert result.status == (404 if method == "GET" else 405)
    assert (await admin(url, "GET", "/api/v1/stats")).status == 404


async def test_methods_paths_and_bodies(nursery: trio.Nursery) -> None:
    url = await start_server(nursery, admin_token=TOKEN)
    cases = [
        ("POST", "/api/v1/calls", 405, "GET, HEAD"),
        ("DELETE", "/api/v1/calls", 405, "GET, HEAD"),
        ("PUT", "/api/v1/calls/call-0001", 405, "GET, HEAD, DELETE"),
        ("GET", "/api/v1/users/bob/sessions", 405, "DELETE"),
        ("DELETE", "/api/v1/stats", 405, "GET, HEAD"),
        ("GET", "/api/v1/nothing", 404, None),
        ("GET", "/api/v1/calls/", 404, None),
        # The other paths keep their answers.
        ("DELETE", "/healthz", 405, "GET, HEAD"),
        ("DELETE", "/ws", 405, "GET, HEAD"),
        ("POST", "/nothing", 405, "GET, HEAD"),
    ]
    for method, path, status, allow in cases:
        result = await admin(url, method, path)
        assert (result.status, result.fields.get("allow")) == (status, allow), (method, path)
    head = await admin(url, "HEAD", "/api/v1/stats")
    assert head.status == 200 and head.body == b"" and int(head.fields["content-length"]) > 0
    twice = await admin(url, "GET", "/api/v1/calls?user=a&user=b")
    assert twice.status == 400
    with_body = await http_request(
        url,
        "/api/v1/calls/call-0001",
        method="DELETE",
        headers=[*AUTH, ("Content-Length", "2")],
    )
    assert with_body.status == 400
    spec = await admin(url, "GET", "/api/v1/openapi.yaml")
    assert spec.status == 200 and spec.body.startswith(b"openapi: 3.1.0")


async def test_a_bug_ending_a_call_is_a_500_and_the_call_goes_on(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def fail(*_args: object) -> None:
        raise RuntimeError("a bug (a test)")

    url = await start_server(nursery, admin_token=TOKEN)
    async with connect(url, "alice") as alice, connect(url, "bob") as bob:
        await accepted_call(alice, bob)
        monkeypatch.setattr(Calling, "terminate", fail)
        with caplog.at_level(logging.ERROR, logger="callbox.core"):
            failed = await admin(url, "DELETE", "/api/v1/calls/call-0001")
        assert failed.status == 500 and orjson.loads(failed.body)["error"] == "internal"
        assert "internal error terminating call 'call-0001'" in caplog.text
        assert (await admin(url, "GET", "/api/v1/calls/call-0001")).status == 200
        await alice.send({"type": "hangup", "call_id": "call-0001"})
        await bob.expect("call_ended", reason="hangup")
