"""TLS on the server's own port: `wss://` and `https://` with certificates from trustme.

Everything goes through real TLS over real sockets on 127.0.0.1: the server's side is
`callbox.server.transport.tls`, the clients' the standard library's `ssl` under trio.
"""

from __future__ import annotations

import gc
import socket
import ssl
import struct
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trustme
from cryptography.hazmat.primitives import serialization
from trio_websocket import ConnectionClosed
from websockets.client import ClientProtocol
from websockets.frames import Frame
from websockets.protocol import CONNECTING
from websockets.uri import parse_uri

from callbox.codec import SCHEMA_FILES
from callbox.config import Config
from callbox.server.app import serve
from tests.helpers import SDP, accepted_call, http_request, server_url, write_certificate

from .wsclient import connect


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    """What a client trusting only the test CA uses."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def start_tls_server(
    nursery: trio.Nursery, ca: trustme.CA, directory: Path, **settings: object
) -> str:
    """`serve` with TLS on a free port; its `wss://` URL."""
    cert, key = write_certificate(ca, directory)
    config = Config(port=0, tls_cert_file=cert, tls_key_file=key).with_overrides(**settings)
    return server_url(await nursery.start(serve, config), scheme="wss")


def port_of(url: str) -> int:
    port = urllib.parse.urlsplit(url).port
    assert port is not None
    return port


async def test_a_call_over_wss(
    nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path, client_context: ssl.SSLContext
) -> None:
    url = await start_tls_server(nursery, ca, tmp_path)
    assert url.startswith("wss://127.0.0.1:")
    async with (
        connect(url, "alice", ssl_context=client_context) as alice,
        connect(url, "bob", ssl_context=client_context) as bob,
    ):
        await accepted_call(alice, bob)
        offer = {"type": "sdp_offer", "call_id": "call-0001", "to": "alice", "sdp": SDP}
        await bob.send(offer)
        relayed = await alice.expect("sdp_offer", sdp=SDP)
        assert relayed["from"] == "bob"
        await alice.send({"type": "hangup", "call_id": "call-0001"})
        await alice.expect("call_ended", reason="hangup")
        await bob.expect("call_ended", reason="hangup")


async def test_what_a_slow_reader_is_sent_arrives_whole_and_in_order(
    nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path, client_context: ssl.SSLContext
) -> None:
    """More than the kernel buffers hold: ciphertext waits for the writer task, in order."""
    url = await start_tls_server(nursery, ca, tmp_path)
    sdps = [f"v=0 {n} ".ljust(60_000, chr(ord("a") + n)) for n in range(12)]  # 720 KB
    async with (
        connect(url, "alice", ssl_context=client_context) as alice,
        connect(url, "bob", ssl_context=client_context) as bob,
    ):
        await accepted_call(alice, bob)
        for sdp in sdps:  # alice reads nothing meanwhile
            await bob.send({"type": "sdp_offer", "call_id": "call-0001", "to": "alice", "sdp": sdp})
        await bob.send({"type": "ping", "rid": "sent"})
        await bob.expect("pong", rid="sent")  # the server has handled every offer
        for sdp in sdps:
            message = await alice.expect("sdp_offer")
            assert message["sdp"] == sdp


async def test_a_slow_reader_over_the_bound_is_closed_with_1013(
    nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path, client_context: ssl.SSLContext
) -> None:
    """The send buffer bound holds under TLS, and the close frame gets through the ciphertext."""
    url = await start_tls_server(nursery, ca, tmp_path, send_buffer_bytes=300_000)
    sdp = "v=0 ".ljust(60_000, "s")
    async with (
        connect(url, "alice", ssl_context=client_context) as alice,
        connect(url, "bob", ssl_context=client_context) as bob,
    ):
        await accepted_call(alice, bob)
        for _ in range(30):  # 1.8 MB: more than the kernel buffers and the bound
            await bob.send({"type": "sdp_offer", "call_id": "call-0001", "to": "alice", "sdp": sdp})
        received = 0
        with pytest.raises(ConnectionClosed), trio.fail_after(10):
            while True:
                await alice.expect("sdp_offer", sdp=sdp)
                received += 1
        assert alice.ws.closed is not None
        assert alice.ws.closed.code == 1013
        assert 0 < received < 30


async def test_https_serves_health_pages_and_404_and_ends_with_close_notify(
    nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path, client_context: ssl.SSLContext
) -> None:
    url = await start_tls_server(nursery, ca, tmp_path)
    health = await http_request(url, "/healthz", ssl_context=client_context)
    assert (health.status, health.body) == (200, b"ok\n")
    assert health.fields["content-length"] == "3"
    page = await http_request(url, "/", ssl_context=client_context)
    assert page.status == 200 and b"callbox.js" in page.body
    schema = await http_request(url, "/schemas/common.json", ssl_context=client_context)
    assert schema.status == 200 and schema.body == SCHEMA_FILES["common.json"]
    missing = await http_request(url, "/nothing", ssl_context=client_context)
    assert missing.status == 404


async def test_the_certificate_names_the_host(
    nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path, client_context: ssl.SSLContext
) -> None:
    """`localhost` is in the certificate too; a name that is not is refused by the client."""
    url = await start_tls_server(nursery, ca, tmp_path)
    localhost = url.replace("127.0.0.1", "localhost")
    async with connect(localhost, "alice", ssl_context=client_context) as alice:
        assert alice.welcome["user_id"] == "alice"
    stream = await trio.open_ssl_over_tcp_stream(
        "127.0.0.1", port_of(url), ssl_context=ssl.create_default_context()
    )  # the system's CAs only
    with pytest.raises(trio.BrokenResourceError) as refused:
        await stream.do_handshake()
    assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)
    await trio.aclose_forcefully(stream)


async def test_plain_http_or_garbage_on_the_tls_port_is_dropped_and_others_go_on(
    nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path, client_context: ssl.SSLContext
) -> None:
    url = await start_tls_server(nursery, ca, tmp_path)
    port = port_of(url)
    for attempt in (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x00\x05hello"):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(attempt)
            with trio.fail_after(5):
                try:
                    while await stream.receive_some():
                        pass  # at most a TLS alert: never an HTTP answer in the clear
                except trio.BrokenResourceError:
                    pass  # reset: the server closed with our bytes unread
    async with connect(url, "alice", ssl_context=client_context) as alice:
        await alice.send({"type": "ping", "rid": "after"})
        await alice.expect("pong", rid="after")


async def test_a_tls_handshake_that_never_comes_is_timed_out(
    nursery: trio.Nursery,
    ca: trustme.CA,
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The handshake timeout covers the TLS handshake: a silent client is closed, without an
    HTTP answer it could not read."""
    url = await start_tls_server(nursery, ca, tmp_path)
    port = port_of(url)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        with trio.fail_after(60):
            assert await stream.receive_some() == b""
        assert trio.current_time() >= 10  # TransportConfig.handshake_timeout


def test_an_unloadable_certificate_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ca: trustme.CA
) -> None:
    from callbox.__main__ import main  # noqa: PLC0415

    cert, key = write_certificate(ca, tmp_path)
    other_cert, _ = write_certificate(ca, tmp_path, "other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    encrypted = tmp_path / "encrypted.key"  # OpenSSL would ask for its passphrase, and wait
    private_key = serialization.load_pem_private_key(Path(key).read_bytes(), password=None)
    encrypted.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    for given_cert, given_key, reason in [
        (str(tmp_path / "missing.pem"), key, "No such file or directory"),
        (str(garbage), key, f"{garbage} holds no PEM certificate"),
        (cert, str(garbage), f"{garbage} holds no PEM private key"),
        (other_cert, key, "the key is not the certificate's"),
        (cert, str(encrypted), "the key is encrypted; callbox needs it unencrypted"),
        (str(tmp_path), key, "Is a directory"),
    ]:
        argv = ["serve", "--port", "0", "--tls-cert", given_cert, "--tls-key", given_key]
        assert main(argv) == 2, given_cert
        (line,) = capsys.readouterr().err.splitlines()
        assert line == (
            f"callbox: cannot load the TLS certificate {given_cert} with the key {given_key}:"
            f" {reason}"
        )


@pytest.fixture
def garbage() -> Iterator[list[object]]:
    """What the cyclic collector finds, with the collector off meanwhile."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


async def tls_churn(url: str, context: ssl.SSLContext) -> None:
    """TLS connections that end in every way: closed, reset, refused, before the handshake."""
    port = port_of(url)
    for how in ("close", "reset", "http"):
        stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=context)
        proto = ClientProtocol(parse_uri(url))
        if how == "http":
            await stream.send_all(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        else:
            proto.send_request(proto.connect())
            await stream.send_all(b"".join(proto.data_to_send()))
            while proto.state is CONNECTING:
                proto.receive_data(await stream.receive_some())
            proto.send_text(b'{"type":"hello","user_id":"u-%s"}' % how.encode())
            await stream.send_all(b"".join(proto.data_to_send()))
            while not any(isinstance(e, Frame) for e in proto.events_received()):
                proto.receive_data(await stream.receive_some())  # up to the welcome
        if how == "close":
            proto.send_close(1000)
            await stream.send_all(b"".join(proto.data_to_send()))
        if how == "reset":
            stream.transport_stream.socket.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            await trio.aclose_forcefully(stream)
            continue
        with trio.fail_after(10):
            try:
                while await stream.receive_some():
                    pass
            except trio.BrokenResourceError:
                pass
        await trio.aclose_forcefully(stream)
    raw = await trio.open_tcp_stream("127.0.0.1", port)  # gone in the TLS handshake
    await raw.send_all(b"\x16\x03\x01\x00\x05hello")
    await raw.aclose()


async def test_ended_tls_connections_leave_no_reference_cycles(
    garbage: list[object],
    ca: trustme.CA,
    tmp_path: Path,
    client_context: ssl.SSLContext,
    autojump_clock: trio.testing.MockClock,
) -> None:
    """As for plain connections (test_transport_limits): the server's rare full collections
    would leave a cycle's connection, SSL object and buffers for minutes."""
    async with trio.open_nursery() as nursery:
        url = await start_tls_server(nursery, ca, tmp_path)
        await tls_churn(url, client_context)  # warm-up: what is made once
        await trio.sleep(120)  # past heartbeats and resume grace
        gc.collect()
        garbage.clear()
        await tls_churn(url, client_context)
        await trio.sleep(120)
        gc.collect()
        nursery.cancel_scope.cancel()
    found = Counter(type(o).__qualname__ for o in garbage)
    # The clients' trio.SSLStreams are garbage cycles of their own (two BIOs and an SSL object
    # each, with their locks); nothing of the server's may be.
    clients = found.pop("SSLStream", 0)
    assert (found.pop("MemoryBIO", 0), found.pop("SSLObject", 0)) == (2 * clients, clients)
    assert not {"TlsConnection", "ServerProtocol", "_Decrypting", "SSLError"} & set(found)
