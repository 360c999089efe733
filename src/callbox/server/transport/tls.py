"""TLS on the transport's own socket paths: `wss://` and `https://` on the same port.

A connection writes without awaiting and reads through the raw socket (`outbound`, the package
docstring), so `trio.SSLStream`, whose `send_all` awaits, does not fit under it: using it would
bring back the awaited send path decision 0009 removed. `TlsConnection` keeps those paths and
puts OpenSSL's sans-I/O half between them and the socket instead (`ssl.SSLObject` over two
`ssl.MemoryBIO`s: what trio.SSLStream uses inside): what the protocol sends is encrypted where the
plain connection would write it, and what the socket brings is decrypted where the plain one
would hand it to the protocol. A plain connection runs none of this: it is a `Connection`, and
the only calls it gained are one per accept (`_input`) and one per request-head read.

Output: plaintext waits in the same bounded buffer as a plain connection's; it is encrypted
when it goes to the socket, at most `TLS_SEAL_BYTES` at a time, and the ciphertext the kernel
did not take waits in `_sealed` for the writer task. So the send buffer bound holds for the
plaintext, and the ciphertext adds at most `TLS_SEAL_BYTES` and its records' overhead.

`ServerCertificate` holds the `ssl.SSLContext` new connections get; `reload()` reads the files
again (on SIGHUP, in `callbox.server.app`), and connections already open keep theirs.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from callbox.server.transport.config import TransportConfig
from callbox.server.transport.connection import Connection, ConnectionHandler
from callbox.server.transport.http import HttpHandler

if TYPE_CHECKING:
    from http import HTTPStatus

    from callbox.server.transport.listener import SharedServices

__all__ = ["TLS_SEAL_BYTES", "CertificateError", "ServerCertificate", "TlsConnection"]

TLS_SEAL_BYTES = 64 * 1024
"""Plaintext encrypted at once (four TLS records): the ciphertext waiting for a slow client is
at most this, on top of the plaintext the send buffer bound allows."""

TLS_RAW_READ_BYTES = 64 * 1024
"""Ciphertext read from the socket at once (into a buffer shared like the plaintext one)."""


class CertificateError(Exception):
    """The certificate or key cannot be loaded: said in one line, not a traceback."""


def load_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context with the standard library's defaults for serving (TLS 1.2 and up, its
    cipher list), renegotiation off (a client could make the server redo handshakes), and
    ALPN `http/1.1`, the only protocol on the port. Raises `CertificateError`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(["http/1.1"])

    def encrypted() -> str:
        # Without this, OpenSSL would ask for the passphrase on the terminal, and wait.
        raise CertificateError(f"{failed}: the key is encrypted; callbox needs it unencrypted")

    failed = f"cannot load the TLS certificate {cert_file} with the key {key_file}"
    try:
        context.load_cert_chain(cert_file, key_file, password=encrypted)
    except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
        reason = _missing_pem(cert_file, key_file) or getattr(error, "strerror", None) or error
        if "KEY_VALUES_MISMATCH" in str(error):
            reason = "the key is not the certificate's"
        raise CertificateError(f"{failed}: {reason}") from error
    return context


def _missing_pem(cert_file: str, key_file: str) -> str | None:
    """Which file is not what it should be, when OpenSSL says only "PEM lib"."""
    for path, marker, what in (
        (cert_file, b"-----BEGIN CERTIFICATE-----", "no PEM certificate"),
        (key_file, b"PRIVATE KEY-----", "no PEM private key"),
    ):
        try:
            if marker not in Path(path).read_bytes():
                return f"{path} holds {what}"
        except OSError:  # said by the error itself
            return None
    return None


class ServerCertificate:
    """The certificate (a context) new connections are served with; `reload` swaps it."""

    def __init__(self, cert_file: str, key_file: str) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.context = load_context(cert_file, key_file)

    def reload(self) -> None:
        """Read the files again; on failure (`CertificateError`) the current context stays."""
        self.context = load_context(self.cert_file, self.key_file)


class _Decrypting:
    """The read loop's source on a TLS connection: `recv_into` gives plaintext (`Source`)."""

    __slots__ = ("_closed", "_incoming", "_sock", "_tls")

    def __init__(self, conn: TlsConnection) -> None:
        self._sock = conn._sock
        self._tls = conn._tls
        self._incoming = conn._tls_in
        self._closed = False  # the peer's close_notify has come: nothing more is read

    def fileno(self) -> int:
        return self._sock.fileno()

    def recv_into(self, buffer: memoryview, /) -> int:
        """Fill `buffer` with what has been decrypted, reading the socket while nothing has; 0 at
        EOF (or after the peer's close_notify). `BlockingIOError` when the socket has nothing
        and no whole record is buffered; `ssl.SSLError` (an `OSError`) for a broken stream."""
        received = self._decrypt_into(buffer)
        raw = _shared_raw_buffer()
        while not received and not self._closed:
            size = self._sock.recv_into(raw)  # raises BlockingIOError: the caller waits
            if not size:
                return 0
            self._incoming.write(raw[:size])
            received = self._decrypt_into(buffer)
        return received

    def _decrypt_into(self, buffer: memoryview) -> int:
        """As many whole records as fit (OpenSSL hands out one per call)."""
        filled, size = 0, len(buffer)
        while filled < size and not self._closed:
            try:
                # With a buffer, `read` returns the count (typeshed says bytes in any case).
                read: int = self._tls.read(size - filled, buffer[filled:])  # type: ignore[assignment]
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify: like EOF, after what came before it
                self._closed = True
                break
            filled += read
        return filled


class TlsConnection(Connection):
    """A connection whose byte stream is TLS (the module docstring says how)."""

    __slots__ = ("_sealed", "_secured", "_tls", "_tls_in", "_tls_out")

    def __init__(
        self,
        stream: trio.SocketStream,
        handler: ConnectionHandler,
        config: TransportConfig,
        http_handler: HttpHandler | None,
        shared: SharedServices,
    ) -> None:
        super().__init__(stream, handler, config, http_handler, shared)
        assert shared.certificate is not None  # the listener makes a TlsConnection only then
        self._tls_in = ssl.MemoryBIO()
        self._tls_out = ssl.MemoryBIO()
        self._tls = shared.certificate.context.wrap_bio(
            self._tls_in, self._tls_out, server_side=True
        )
        self._sealed = bytearray()  # ciphertext the kernel has not taken yet
        self._secured = False  # handshake done, close_notify not sent: application data flows

    # -- reading ---------------------------------------------------------------------------

    async def _receive_head(self, max_bytes: int) -> bytes:
        """The TLS handshake on the first call (within the head's timeout and slot), then
        plaintext. (It waits outside the `except` clauses, so no exception is chained to one
        that refers, through its frames, to this connection: `_release_protocol_errors`.)"""
        if not self._secured:
            await self._tls_handshake()
        while (plaintext := self._decrypted(max_bytes)) is None:
            data = await self._stream.receive_some(TLS_RAW_READ_BYTES)
            if not data:
                return b""
            self._tls_in.write(data)
        return plaintext

    def _decrypted(self, max_bytes: int) -> bytes | None:
        """Plaintext received (b"" after the peer's close_notify), or None for none yet."""
        try:
            return self._tls.read(max_bytes)
        except ssl.SSLWantReadError:
            return None
        except ssl.SSLZeroReturnError:
            return b""

    async def _tls_handshake(self) -> None:
        while not self._handshake_step():
            await self._send_handshake_output()
            data = await self._stream.receive_some(TLS_RAW_READ_BYTES)
            if not data:
                raise trio.BrokenResourceError("EOF during the TLS handshake")
            self._tls_in.write(data)
        await self._send_handshake_output()  # the last flight, and TLS 1.3 session tickets
        self._secured = True

    def _handshake_step(self) -> bool:
        """Take the handshake as far as what has been received allows; whether it is done."""
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            return False
        return True

    async def _send_handshake_output(self) -> None:
        if self._tls_out.pending:
            data = self._tls_out.read()
            await self._stream.send_all(data)

    def _input(self) -> _Decrypting:
        return _Decrypting(self)

    # -- writing ---------------------------------------------------------------------------

    def _seal(self, plaintext: bytes | bytearray | memoryview) -> bytes:
        self._tls.write(plaintext)
        self._bytes_out += len(plaintext)
        return self._tls_out.read()

    def _send_now(self, data: bytes | bytearray) -> int | None:
        """Encrypt up to `TLS_SEAL_BYTES` and write what the kernel takes; how much plaintext
        was taken (None if the socket is dead). Ciphertext left over waits for the writer, and
        nothing more is taken until it is out."""
        if self._sealed:
            return 0
        taken = data if len(data) <= TLS_SEAL_BYTES else data[:TLS_SEAL_BYTES]
        self._sealed += self._seal(taken)
        if not self._send_sealed():
            if self._broken:
                return None
            self._start_writer()
        return len(taken)

    def _send_sealed(self) -> bool:
        """Write the ciphertext the kernel takes now; whether it took all (a dead socket aborts
        the connection)."""
        try:
            sent = self._sock.send(self._sealed)
        except BlockingIOError:
            return False
        except OSError as exc:
            self._abort(exc)
            return False
        del self._sealed[:sent]
        return not self._sealed

    async def _drain_or_raise(self) -> None:
        sock = self._sock
        sealed, out = self._sealed, self._out
        while True:
            while sealed or out:
                if not sealed:
                    taken = out[:TLS_SEAL_BYTES]
                    del out[:TLS_SEAL_BYTES]
                    sealed += self._seal(taken)
                await trio.lowlevel.wait_writable(sock)
                try:
                    sent = sock.send(sealed)
                except BlockingIOError:
                    continue
                del sealed[:sent]
            if not self._eof_pending or self._eof_sent:
                return
            self._shutdown_socket()  # seals close_notify, or (once it is out) half-closes
            if self._eof_sent:
                return

    def _shutdown_socket(self) -> None:
        """close_notify (RFC 8446 §6.1) after everything else, then the TCP half-close."""
        if self._secured:
            self._secured = False
            try:
                self._tls.unwrap()
            except ssl.SSLWantReadError:  # it waits for the peer's close_notify: not needed
                pass
            except ssl.SSLError:  # the stream is broken already: nothing more to say in it
                self._tls_out.read()
            self._sealed += self._tls_out.read()
        if self._sealed and not self._send_sealed():
            if not self._broken:
                self._start_writer()  # the writer, or `_finish`'s drain, comes back here
            return
        super()._shutdown_socket()

    def _refuse(self, status: HTTPStatus) -> None:
        """An HTTP refusal can only be said once the TLS handshake is done; before that, the
        connection just closes."""
        if self._secured:
            super()._refuse(status)

    def _abort(self, exc: BaseException) -> None:
        self._sealed.clear()
        super()._abort(exc)


_RAW_BUFFER: trio.lowlevel.RunVar[memoryview] = trio.lowlevel.RunVar("callbox_tls_raw_buffer")


def _shared_raw_buffer() -> memoryview:
    """One buffer for the ciphertext every TLS connection of this trio run reads, in turn (the
    plaintext's buffer, `connection._shared_read_buffer`, says why; this one is emptied into
    the connection's own BIO before anything else runs)."""
    try:
        return _RAW_BUFFER.get()
    except LookupError:
        buffer = memoryview(bytearray(TLS_RAW_READ_BYTES))
        _RAW_BUFFER.set(buffer)
        return buffer
