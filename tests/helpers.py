"""Helpers shared by test modules, so that no test module imports from another.

`start_server` is the one way the tests run the real server in-process; `conftest.py` wraps it in
the `url` fixture for tests that need a server with the default configuration.
"""

from __future__ import annotations

import ssl
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio
import trio.lowlevel
import trustme

from callbox.config import Config
from callbox.server.app import serve
from tests.server.wsclient import Client

SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
"""A minimal session description: the server relays SDP without reading it."""


def server_url(listeners: list[trio.SocketListener], scheme: str = "ws") -> str:
    """The WebSocket URL of the first of `serve`'s listeners (`scheme` "wss" for TLS)."""
    host, port = listeners[0].socket.getsockname()[:2]
    return f"{scheme}://{host}:{port}/ws"


@attrs.frozen
class HttpResult:
    """A response as the tests look at it: header names lower-cased (each once)."""

    status: int
    fields: dict[str, str]
    body: bytes
    head: str


async def http_request(
    url: str,
    path: str,
    *,
    method: str = "GET",
    headers: Sequence[tuple[str, str]] = (),
    ssl_context: ssl.SSLContext | None = None,
) -> HttpResult:
    """One HTTP/1.1 request to the server of `url` (a `ws://` or `wss://` URL: `ssl_context`
    for the latter), read to the end (the server closes; over TLS trio checks its close_notify)."""
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    stream: trio.abc.Stream
    if ssl_context is None:
        stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    else:
        stream = await trio.open_ssl_over_tcp_stream(
            parts.hostname, parts.port, ssl_context=ssl_context
        )
    lines = [f"{method} {path} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{name}: {value}" for name, value in headers]
    async with stream:
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
        response = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some():
                response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *field_lines = head.decode().split("\r\n")
    fields = {
        name.lower(): value.strip() for name, _, value in (f.partition(":") for f in field_lines)
    }
    return HttpResult(int(status_line.split()[1]), fields, body, head.decode())


def write_certificate(ca: trustme.CA, directory: Path, name: str = "server") -> tuple[str, str]:
    """A new certificate of `ca` for 127.0.0.1 and localhost, as the files `callbox serve`
    takes: `name`.pem (the chain) and `name`.key; returns their paths."""
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    leaf.private_key_pem.write_to_path(str(key))
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    return str(cert), str(key)


async def start_server(nursery: trio.Nursery, **settings: Any) -> str:
    """Runs `serve` in `nursery` on a free port with `settings` over the defaults,
    and returns its URL once it accepts connections."""
    config = Config(port=0).with_overrides(**settings)
    return server_url(await nursery.start(serve, config))


SHORT_LIMITS = {
    "ring_timeout_ms": 1000,
    "max_call_duration_ms": 3000,
    "call_expiring_warning_ms": 1000,
    "reconnect_grace_ms": 500,
    "max_room_members": 4,
    "replay_buffer_messages": 64,
    "hello_timeout_ms": 1000,
}
"""Timers short enough for every case to run in seconds, limits small enough to be reached."""


async def start_conformance_server(nursery: trio.Nursery, **settings: Any) -> str:
    """Our server with `SHORT_LIMITS` (and `settings` over them), for the suite to run against."""
    return await start_server(nursery, **{**SHORT_LIMITS, **settings})


def initiate(call_id: str, *to: str, **extra: Any) -> dict[str, Any]:
    """A `call_initiate` on the wire, audio and video."""
    media = {"audio": True, "video": True}
    return {"type": "call_initiate", "call_id": call_id, "to": list(to), "media": media, **extra}


async def accepted_call(alice: Client, bob: Client, call_id: str = "call-0001") -> None:
    """alice calls bob and bob answers: both have seen `call_accepted`."""
    await alice.send(initiate(call_id, "bob"))
    await alice.expect("call_ringing")
    await bob.expect("call_incoming", call_id=call_id)
    await bob.send({"type": "call_answer", "call_id": call_id})
    await bob.expect("call_accepted", by="bob")
    await alice.expect("call_accepted", by="bob")


def running_task_names() -> list[str]:
    """The name of every task of the run, walked from the root task: what is really running,
    whatever the server's own bookkeeping says."""

    def walk(task: trio.lowlevel.Task) -> Iterator[trio.lowlevel.Task]:
        yield task
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                yield from walk(child)

    return [task.name for task in walk(trio.lowlevel.current_root_task())]
