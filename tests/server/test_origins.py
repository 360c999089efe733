"""ALLOWED_ORIGINS over real sockets: which pages may open a WebSocket, and read the files.

Browsers send `Origin` with every WebSocket upgrade and every cross-origin fetch; these tests send
it as a browser would, on raw requests, and read the server's answer.
"""

from __future__ import annotations

import trio

from tests.helpers import http_request, start_server

from .wsclient import connect

APP = "https://app.example.com"
OTHER = "https://evil.example.net"
UPGRADE = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
]


async def test_an_upgrade_from_a_listed_origin_or_from_no_browser_is_accepted(
    nursery: trio.Nursery,
) -> None:
    url = await start_server(nursery, allowed_origins=(APP, "http://127.0.0.1:8080"))
    async with connect(url, "app-user", extra_headers=[(b"Origin", APP.encode())]) as client:
        await client.send({"type": "ping", "rid": "1"})
        await client.expect("pong", rid="1")
    async with connect(url, "no-browser") as client:  # no Origin at all: a native app
        await client.send({"type": "ping", "rid": "2"})
        await client.expect("pong", rid="2")


async def test_an_upgrade_from_another_origin_is_refused_with_403(nursery: trio.Nursery) -> None:
    url = await start_server(nursery, allowed_origins=(APP,))
    for origin in (OTHER, "null", APP + ":443", APP.upper(), "http://app.example.com"):
        refused = await http_request(url, "/ws", headers=[*UPGRADE, ("Origin", origin)])
        assert refused.status == 403, origin
        assert b"invalid Origin header" in refused.body, refused.body
    async with connect(url, "still-fine", extra_headers=[(b"Origin", APP.encode())]) as client:
        assert client.welcome["user_id"] == "still-fine"


async def test_without_a_list_any_origin_may_upgrade(nursery: trio.Nursery) -> None:
    url = await start_server(nursery)
    async with connect(url, "anyone", extra_headers=[(b"Origin", OTHER.encode())]) as client:
        assert client.welcome["user_id"] == "anyone"


async def test_files_name_a_listed_origin_and_vary_on_it(nursery: trio.Nursery) -> None:
    url = await start_server(nursery, allowed_origins=(APP,))
    for path in ("/callbox.js", "/", "/schemas/common.json", "/schemas/"):
        allowed = await http_request(url, path, headers=[("Origin", APP)])
        assert allowed.status == 200, path
        assert allowed.fields["access-control-allow-origin"] == APP, path
        assert allowed.fields["vary"] == "Origin", path
        assert allowed.head.count("Access-Control-Allow-Origin") == 1
        for headers in ([("Origin", OTHER)], []):
            other = await http_request(url, path, headers=headers)
            assert other.status == 200, path  # the file is public; the browser withholds it
            assert "access-control-allow-origin" not in other.fields, (path, headers)
            assert other.fields["vary"] == "Origin", path
            assert other.body == allowed.body


async def test_without_a_list_files_are_for_any_origin(nursery: trio.Nursery) -> None:
    url = await start_server(nursery)
    for headers in ([("Origin", OTHER)], []):
        script = await http_request(url, "/callbox.js", headers=headers)
        assert script.status == 200
        assert script.fields["access-control-allow-origin"] == "*"
        assert script.fields["content-type"] == "text/javascript; charset=utf-8"


async def test_health_and_metrics_carry_no_cors_fields(nursery: trio.Nursery) -> None:
    url = await start_server(nursery, allowed_origins=(APP,))
    for path in ("/healthz", "/metrics"):
        response = await http_request(url, path, headers=[("Origin", APP)])
        assert response.status == 200, path
        assert "access-control-allow-origin" not in response.fields, path


async def test_a_request_with_two_origins_is_named_in_none(nursery: trio.Nursery) -> None:
    url = await start_server(nursery, allowed_origins=(APP,))
    response = await http_request(url, "/callbox.js", headers=[("Origin", APP), ("Origin", APP)])
    assert response.status == 200
    assert "access-control-allow-origin" not in response.fields
