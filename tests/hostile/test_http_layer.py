"""HTTP upgrade layer: request heads no WebSocket client sends.

Every complete head gets a status and the socket closed: 400 for what does not parse, 405 (with
`Allow`) for methods other than GET and HEAD, 426 for the WebSocket path without a valid upgrade,
431 for a head over the server's bound, 404 for unknown paths, and HEAD as GET without a body
(docs/decisions/0005-hardening.md). A head never finished gets 408 at the handshake deadline.
"""

from __future__ import annotations

import base64
import os

import attrs
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hostile.harness import (
    FIGURES,
    HANG_GUARD_S,
    NETWORK,
    ServerProcess,
    http_exchange,
    status_of,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("guard")]

LAYER = "http"
MAX_REQUEST_HEAD_BYTES = 16 * 1024
"""docs/decisions/0005-hardening.md: a head is read into at most 16 KiB (431 beyond)."""
MAX_LINE_BYTES = 8192
"""websockets' bound on one line of the head: a longer one does not parse (400)."""
HANDSHAKE_TIMEOUT_S = 10.0
"""TransportConfig.handshake_timeout: an unfinished head gets 408 then."""
RESOURCES = {"/healthz", "/metrics", "/", "/callbox.js"}
UPGRADE = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", base64.b64encode(os.urandom(16)).decode()),
    ("Sec-WebSocket-Version", "13"),
]


@attrs.frozen
class Head:
    method: str
    target: str
    upgrade: tuple[tuple[str, str], ...]
    """The upgrade headers sent, each possibly spoilt."""
    extra: tuple[tuple[str, str], ...]

    def encode(self) -> bytes:
        lines = [f"{self.method} {self.target} HTTP/1.1", "Host: test"]
        lines += [f"{name}: {value}" for name, value in self.upgrade + self.extra]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def expected(self) -> set[int]:
        """The statuses the server may answer with (one, except for bad upgrades: websockets
        answers some with 400 and a missing upgrade with 426)."""
        if len(self.encode()) > MAX_REQUEST_HEAD_BYTES:
            return {431}
        if max(map(len, self.encode().split(b"\r\n"))) > MAX_LINE_BYTES:
            return {400, 431}
        if self.method not in ("GET", "HEAD"):
            return {405}
        path = self.target.partition("?")[0]
        if path == "/ws":
            if self.method == "HEAD":
                return {426}
            return {101} if set(self.upgrade) == set(UPGRADE) else {400, 426}
        return {200} if path in RESOURCES else {404}


TOKEN = st.text(
    alphabet="!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
    min_size=1,
)
"""RFC 9110 tokens: what a method or a header name may be."""
VALUE = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1)


@st.composite
def heads(draw: st.DrawFn) -> Head:
    methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT"]
    method = draw(st.sampled_from(methods) | TOKEN.filter(lambda t: ":" not in t))
    target = draw(
        st.sampled_from([*RESOURCES, "/ws", "/ws?x=1", "/nope"]) | TOKEN.map("/{}".format)
    )
    upgrade = []
    for name, value in UPGRADE:
        choice = draw(st.sampled_from(["keep", "keep", "drop", "spoil"]))
        if choice == "keep":
            upgrade.append((name, value))
        elif choice == "spoil":
            upgrade.append((name, draw(VALUE.filter(lambda t, v=value: t != v))))
    extra = draw(
        st.lists(
            st.tuples(TOKEN.map("X-{}".format), VALUE),
            max_size=150,  # more than websockets' 128 headers (then 400 or 431)
        )
    )
    long_value = draw(st.sampled_from([0, 0, 0, 9_000, 20_000]))
    if long_value:
        extra.append(("X-Long", "v" * long_value))
    return Head(method, target, tuple(upgrade), tuple(extra))


@settings(NETWORK, max_examples=150)
@given(head=heads())
async def test_every_request_head_gets_a_status_and_the_socket_closed(
    server: ServerProcess, head: Head
) -> None:
    FIGURES.count(LAYER)
    expected = head.expected()
    if 101 in expected:
        return  # a valid upgrade: not this test's business (the sentinel does that all along)
    response = await http_exchange(server, head.encode())  # reads to EOF: the socket closed
    status = status_of(response)
    too_many_headers = len(head.extra) + len(head.upgrade) + 1 > 128
    assert status in (expected | {400, 431} if too_many_headers else expected), response[:300]
    assert response.count(b"HTTP/1.1 ") == 1
    if status == 405:
        assert b"\r\nAllow: GET, HEAD\r\n" in response
    if head.method == "HEAD" and status not in (400, 431):  # (those are sent before parsing)
        assert response.endswith(b"\r\n\r\n"), "HEAD is answered without a body"


@settings(NETWORK, max_examples=60)
@given(garbage=st.binary(min_size=1, max_size=2_000))
async def test_garbage_followed_by_an_empty_line_gets_400_or_another_4xx(
    server: ServerProcess, garbage: bytes
) -> None:
    FIGURES.count(LAYER)
    response = await http_exchange(server, garbage + b"\r\n\r\n")
    status = status_of(response)
    assert status is not None, response[:200]
    assert 400 <= status < 500, response[:200]


async def test_head_of_healthz_is_get_without_body(server: ServerProcess) -> None:
    get = await http_exchange(server, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    head = await http_exchange(server, b"HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    FIGURES.count(LAYER, 2)
    assert status_of(head) == status_of(get) == 200
    _, _, body = get.partition(b"\r\n\r\n")
    assert body == b"ok\n"
    assert head.endswith(b"\r\n\r\n")
    assert b"Content-Length: 3\r\n" in head


async def test_unfinished_heads_huge_or_trickled_are_answered_and_memory_stays_bounded(
    server: ServerProcess,
) -> None:
    """Issue 10 finding (c): 200 connections each sending ~1 MiB of headers that never end
    (websockets alone buffers 128 lines of 8 KiB each) get 431 once past 16 KiB; 20 that trickle
    a header byte at a time get 408 at the handshake deadline."""
    huge = b"GET /ws HTTP/1.1\r\n" + b"".join(
        b"X-%d: %s\r\n" % (i, b"v" * 8000) for i in range(127)
    )
    statuses: list[int | None] = []

    async def trickle() -> None:
        stream = await trio.open_tcp_stream(server.host, server.port)
        response = b""
        with trio.move_on_after(HANDSHAKE_TIMEOUT_S + 3):
            await stream.send_all(b"GET /ws HTTP/1.1\r\n")
            for _ in range(int(HANDSHAKE_TIMEOUT_S * 2) + 4):
                try:
                    await stream.send_all(b"X")
                except trio.BrokenResourceError:
                    break
                with trio.move_on_after(0.5):
                    response += await stream.receive_some()
                if response:
                    break
        await stream.aclose()
        statuses.append(status_of(response))

    async def heavy() -> None:
        statuses.append(status_of(await http_exchange(server, huge)))

    with trio.fail_after(HANDSHAKE_TIMEOUT_S + 2 * HANG_GUARD_S):
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(trickle)
            for _ in range(200):
                nursery.start_soon(heavy)
    FIGURES.count(LAYER, 220)
    assert sorted(statuses, key=str) == sorted([408] * 20 + [431] * 200, key=str)
