"""Helpers shared by test modules, so that no test module imports from another.

`start_server` is the one way the tests run the real server in-process; `conftest.py` wraps it in
the `url` fixture for tests that need a server with the default configuration. `serve_process`
runs it as a user does, a process of its own, for tests that stop a server.
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import jsonschema
import trio
import trio.lowlevel
import trustme
from trio_websocket import WebSocketRequest, serve_websocket

from callbox.codec import REGISTRY, SCHEMA_BASE, encode
from callbox.config import Config
from callbox.conformance.cases.states import UNREACHABLE
from callbox.messages import Welcome
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


ADMIN_TOKEN = "admin-token-for-tests-0123456789abcdef"
"""The `ADMIN_TOKEN` of the tests' servers with the admin API on."""


async def admin_request(
    url: str, method: str, path: str, token: str | None = ADMIN_TOKEN
) -> HttpResult:
    """One request to the admin API of the server of `url`, with `token` as its bearer token
    (None: without one)."""
    headers = [] if token is None else [("Authorization", f"Bearer {token}")]
    return await http_request(url, path, method=method, headers=headers)


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


def closed_port_url() -> str:
    """A WebSocket URL on 127.0.0.1 where nothing listens: connections to it are refused.
    (The port was free a moment ago; another test taking it in between is very unlikely.)"""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"ws://127.0.0.1:{port}/ws"


async def closing_node(nursery: trio.Nursery, code: int, *, welcome: Welcome | None = None) -> str:
    """A WebSocket server on 127.0.0.1 that reads `hello` and closes with `code`, as a node
    turning clients away does (1013: try again later); the first time, it answers with
    `welcome` before closing, if given. Returns its URL."""
    welcomes = [encode(welcome).decode()] if welcome else []

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.get_message()
        if welcomes:
            await ws.send_message(welcomes.pop())
        await ws.aclose(code, "not now")

    server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
    return f"ws://127.0.0.1:{server.port}/ws"


SERVE_START_TIMEOUT_S = 20
SERVE_STOP_TIMEOUT_S = 10
LISTENING = re.compile(r"callbox listening on (ws://\S+)")


class ServeProcess:
    """`callbox serve --port 0` on 127.0.0.1, a process of its own; see `serve_process`."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.pid = process.pid
        self.url = ""
        self.log = ""
        """Its stderr so far."""

    async def read_log(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Collects stderr; started once the server says where it listens."""
        assert self.process.stderr is not None
        while chunk := await self.process.stderr.receive_some():
            self.log += chunk.decode(errors="replace")
            if not self.url and (match := LISTENING.search(self.log)):
                self.url = match.group(1)
                task_status.started()
        if not self.url:
            raise AssertionError(f"the server exited before listening:\n{self.log}")

    async def stop(self) -> None:
        """SIGTERM to its process id (a drain: its clients get 1012), then SIGKILL
        if it is still there after SERVE_STOP_TIMEOUT_S."""
        if self.process.returncode is not None:
            return
        os.kill(self.pid, signal.SIGTERM)
        with trio.move_on_after(SERVE_STOP_TIMEOUT_S):
            await self.process.wait()
            return
        os.kill(self.pid, signal.SIGKILL)
        await self.process.wait()


@asynccontextmanager
async def serve_process(*flags: str, **env: str) -> AsyncIterator[ServeProcess]:
    """Runs `callbox serve` with `flags` and `env` over a clean environment for the block; stops
    it by its process id when the block ends, and fails if it logged a traceback."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CALLBOX_", "JWT_"))}
    command = [sys.executable, "-m", "callbox", "serve", "--host", "127.0.0.1", "--port", "0"]
    command += flags
    process = await trio.lowlevel.open_process(
        command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env={**clean, **env}
    )
    server = ServeProcess(process)
    async with trio.open_nursery() as nursery:
        try:
            with trio.fail_after(SERVE_START_TIMEOUT_S):
                await nursery.start(server.read_log)
            yield server
        finally:
            with trio.CancelScope(shield=True):
                await server.stop()
    assert "Traceback" not in server.log, server.log


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

CONFORMANCE_SKIPPED = {f"call.{row}" for row in UNREACHABLE} | {
    "calls.end.error",
    "errors.internal",
    "errors.unavailable",
    "calls.offline_ringing.answer",
    "calls.offline_ringing.timeout",
}
"""What the suite skips against our server with `SHORT_LIMITS`, a single process or a
cluster: rows no event sequence reaches, the end reason and the error codes only a failing
server (or a cluster's node cut off from its store) sends, and offline ringing, which needs a
webhook (tests/conformance/test_suite.py runs those cases against a server with one)."""


async def start_conformance_server(nursery: trio.Nursery, **settings: Any) -> str:
    """Our server with `SHORT_LIMITS` and the admin API on (`ADMIN_TOKEN`), and `settings` over
    them, for the suite to run against."""
    return await start_server(nursery, **{**SHORT_LIMITS, "admin_token": ADMIN_TOKEN, **settings})


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


def load_tool(name: str) -> ModuleType:
    """The script `tools/<name>.py`: tools/ is not a package, so it is loaded by path (and
    registered, for its dataclasses)."""
    path = Path(__file__).resolve().parent.parent / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def check_webhook_body(body: Any) -> None:
    """Raises unless `body` (a webhook POST's JSON, parsed) is valid against the schema of its
    event type, schemas/webhooks/<type>.json, with a UTC ISO 8601 `timestamp`."""
    schema = REGISTRY.contents(f"{SCHEMA_BASE}webhooks/{body['type']}.json")
    jsonschema.Draft202012Validator(schema, registry=REGISTRY).validate(body)
    # `format: date-time` is not checked by jsonschema without an extra package: by hand.
    assert body["timestamp"].endswith("Z"), body["timestamp"]
    datetime.datetime.fromisoformat(body["timestamp"])
