"""`callbox serve` as a user runs it: a real process, stopped by SIGTERM or Ctrl-C, and told to
read its TLS certificate again by SIGHUP."""

from __future__ import annotations

import re
import signal
import ssl
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
import trio
import trustme
from cryptography import x509
from trio_websocket import ConnectionClosed

from tests.helpers import write_certificate

from .wsclient import connect


async def read_until(stream: trio.abc.ReceiveStream, pattern: re.Pattern[str]) -> tuple[str, str]:
    """Read `stream` until `pattern` matches; returns the match's first group and all text read."""
    text = ""
    while (match := pattern.search(text)) is None:
        chunk = await stream.receive_some()
        assert chunk, f"the server exited before matching {pattern.pattern!r}:\n{text}"
        text += chunk.decode()
    return match.group(1), text


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
async def test_serve_drains_and_says_service_restart(stop_signal: signal.Signals) -> None:
    """The first signal drains: the port closes (a new client is refused, so it tries its next
    URL), every client gets 1012, and the process exits 0 once they are gone."""
    command = [sys.executable, "-m", "callbox", "serve", "--port", "0"]
    process = await trio.lowlevel.open_process(command, stderr=subprocess.PIPE)
    assert process.stderr is not None
    try:
        with trio.fail_after(20):
            listening = re.compile(r"callbox listening on (ws://\S+)")
            url, log = await read_until(process.stderr, listening)
            async with connect(url, "alice") as alice, connect(url, "bob") as bob:
                process.send_signal(stop_signal)
                for client in (alice, bob):
                    with pytest.raises(ConnectionClosed):
                        await client.ws.get_message()
                    assert client.ws.closed is not None
                    assert client.ws.closed.code == 1012
                    assert client.ws.closed.reason == "service restart"
                port = int(url.rsplit(":", 1)[1].removesuffix("/ws"))
                with pytest.raises(OSError):  # the port is closed: refused
                    await trio.open_tcp_stream("127.0.0.1", port)
            while chunk := await process.stderr.receive_some():
                log += chunk.decode()
            assert await process.wait() == 0
    finally:
        process.kill()
    assert "Traceback" not in log, log
    assert "closing 2 with 1012 (service restart)" in log, log
    assert "drained in" in log, log
    page = "http" + url.removeprefix("ws").removesuffix("ws")
    assert f"demo page at {page}\n" in log, log


async def test_a_second_signal_stops_a_drain_at_once() -> None:
    """A client that never answers the close keeps a drain waiting (for its closing handshake,
    5 s): a second SIGTERM stops the server then and there, with exit status 0."""
    command = [sys.executable, "-m", "callbox", "serve", "--port", "0"]
    process = await trio.lowlevel.open_process(command, stderr=subprocess.PIPE)
    assert process.stderr is not None
    try:
        with trio.fail_after(20):
            url, log = await read_until(process.stderr, re.compile(r"listening on (ws://\S+)"))
            host_port = url.removeprefix("ws://").removesuffix("/ws")
            host, port = host_port.rsplit(":", 1)
            mute = await trio.open_tcp_stream(host, int(port))  # upgrades, then reads nothing
            await mute.send_all(
                b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            assert b" 101 " in await mute.receive_some()
            process.send_signal(signal.SIGTERM)
            _, more = await read_until(process.stderr, re.compile(r"(closing 1 with 1012)"))
            log += more
            process.send_signal(signal.SIGTERM)
            while chunk := await process.stderr.receive_some():
                log += chunk.decode()
            assert await process.wait() == 0
            await mute.aclose()
    finally:
        process.kill()
    assert "SIGTERM received again, stopping at once" in log, log
    assert "drained in" not in log, log
    assert "Traceback" not in log, log


def serial_in_file(cert_file: str) -> int:
    return x509.load_pem_x509_certificate(Path(cert_file).read_bytes()).serial_number


async def served_serial(url: str, context: ssl.SSLContext) -> int:
    """The serial number of the certificate a new connection to `url` is shown."""
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    stream = await trio.open_ssl_over_tcp_stream(parts.hostname, parts.port, ssl_context=context)
    async with stream:
        await stream.do_handshake()
        der = stream.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


async def test_sighup_serves_a_renewed_certificate_to_new_connections(tmp_path: Path) -> None:
    ca = trustme.CA()
    context = ssl.create_default_context()
    ca.configure_trust(context)
    cert, key = write_certificate(ca, tmp_path)
    first = serial_in_file(cert)
    command = [sys.executable, "-m", "callbox", "serve", "--port", "0"]
    command += ["--tls-cert", cert, "--tls-key", key]
    process = await trio.lowlevel.open_process(command, stderr=subprocess.PIPE)
    assert process.stderr is not None
    try:
        with trio.fail_after(20):
            page, log = await read_until(process.stderr, re.compile(r"demo page at (https://\S+)"))
            url = re.search(r"callbox listening on (wss://\S+)", log).group(1)  # type: ignore[union-attr]
            assert page == "https" + url.removeprefix("wss").removesuffix("ws")
            assert await served_serial(url, context) == first
            async with connect(url, "alice", ssl_context=context) as alice:
                write_certificate(ca, tmp_path)  # renewed in place, as certbot does
                second = serial_in_file(cert)
                assert second != first
                process.send_signal(signal.SIGHUP)
                _, more = await read_until(process.stderr, re.compile(r"(reloaded the TLS)"))
                log += more
                assert await served_serial(url, context) == second
                await alice.send({"type": "ping", "rid": "still"})  # opened before: goes on
                await alice.expect("pong", rid="still")

            Path(cert).write_text("half-written\n")  # a broken renewal: the current one stays
            process.send_signal(signal.SIGHUP)
            _, more = await read_until(process.stderr, re.compile(r"(still serving the previous)"))
            log += more
            assert await served_serial(url, context) == second

            process.send_signal(signal.SIGTERM)
            while chunk := await process.stderr.receive_some():
                log += chunk.decode()
            assert await process.wait() == 0
    finally:
        process.kill()
    assert "Traceback" not in log, log
