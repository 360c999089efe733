"""WebSocket transport: one trio task per connection driving websockets' sans-I/O protocol.

Why not trio-websocket: per message it hops reader task -> channel -> handler, takes a lock
and awaits the send, which caps a relay at ~13k msgs/s on one core. Here the connection task
reads a large chunk, feeds `ServerProtocol`, and calls the application synchronously; the
application's `send_text` writes to the non-blocking socket (what one read's messages produce
for a connection goes in one `send` once they are handled) and only spills into a bounded
buffer, drained by a short-lived writer task, when the kernel will not take more
(docs/decisions/0001-transport.md).

One module per concern (docs/decisions/0009-transport-layout.md):

- `connection`: `Connection`, the protocol driving: the request head, reading in turns,
  fragments and UTF-8, the handler's callbacks, the closing handshake and shutdown;
- `outbound`: its send half (`Outbound`, `Connection`'s base class): the send buffer bound,
  the per-read output batch, direct writes, the writer task, the half-close;
- `heartbeats`: `Heartbeats`, every connection's pings and timeouts from one task;
- `listener`: `serve_websockets`, the accept loop, `SharedServices`;
- `http`: the answer to every request head that is not a WebSocket upgrade, the application's
  through its async `HttpHandler` (docs/decisions/0016-admin-api.md);
- `tls`: `TlsConnection`, the same connection with TLS between its paths and the socket, and
  `ServerCertificate`, reloadable (docs/decisions/0012-tls-and-origins.md);
- `config`: `TransportConfig`, the limits.

Every connection is a `trio.SocketStream`, and the tests use real sockets too: there is one
send path and one receive path, the ones production runs (with TLS, the same ones, through
`ssl.SSLObject`).
"""
