"""Load generator: raw WebSocket clients against callbox, PeerJS or a bare relay, in phases.

A workload sets clients up once (pairs in 1:1 calls, pairs ready to call, room members, or idle
clients), then runs its phases one after the other on the same connections. Every phase opens
a measured window after a warm-up, announces it on stdout (``window-start LABEL`` and
``window-end LABEL``, when the runner samples the server's CPU and memory), drains what is still
in flight, and reports ``result {json}``: the counts, and the generator's own CPU time in the
window, so a reader can tell a saturated server from a saturated generator.

Phases:

- ``relay:SIZE`` (pairs): each client keeps at most ``--window`` messages in flight to its peer
  (sent, not yet received) and its peer sends one more per receipt. SIZE is the client message
  in bytes: under 1000 an ICE candidate, else an SDP offer. Result: messages relayed per second.
- ``latency:SIZE:RATE`` (pairs): open loop at RATE messages a second in all, round-robin over
  the clients. Each stream (one client to its peer) is FIFO, so the k-th message received from
  a peer is the k-th it sent: no tagging. Result: latency percentiles from send to receipt.
- ``setups`` (callbox, pairs ready to call): each pair runs whole calls back to back:
  ``call_initiate`` -> ``call_ringing``/``call_incoming`` -> ``call_answer`` ->
  ``call_accepted`` x2 -> ``sdp_offer`` -> ``sdp_answer`` -> 4 ``ice_candidate`` each way ->
  ``hangup`` -> ``call_ended`` x2. Result: calls per second.
- ``fanout:SIZE`` (callbox, rooms): every member sends ``room_broadcast`` (its ``data`` sized
  so the message is SIZE bytes) and sends one more per ``room size - 1`` ``room_message``
  received, which keeps the number in flight constant. Result: deliveries per second.
- idle clients (``--workload idle``): connect ``--steps`` clients in steps, print
  ``idle-step N`` after each and wait for a line on stdin (the runner reads the server's RSS).

Set-up speaks through websockets' sans-I/O ``ClientProtocol``. The measured streams do not:
receiving and sending a message through it costs ~5 us of CPU against ~0.6 us here, a third
of the generator's core at the fast relays' rate. Client frames are masked with a zero key
(the payload is then the bytes as they are; servers cannot tell, and must not care), and the
receive path only splits the unmasked server frames and checks each is the expected message.

``--port`` takes several ports for a cluster's nodes (bench/cluster_bench.py); ``--placement``
then says where each pair's parties go (`Placement`: both on one node, across two, or half and
half). ``--drain`` is how long a phase waits at most for what is still in flight at its end
(a slow target's leftovers would be the next phase's unexpected frames).

Protocols: ``bare`` (bench/bare_relays.py), ``callbox`` (``python -m callbox serve``), ``peerjs``
(the ``peer`` npm package: ``/peerjs?key=peerjs&id=ID&token=T``, then ``{type, dst, payload}``
forwarded to ``dst`` with ``src`` added).

``--tls CAFILE``: every client speaks TLS (``wss://``), trusting the CA in CAFILE. Like the frames,
TLS runs through the standard library's sans-I/O half (``ssl.SSLObject`` over memory BIOs, see
`TlsChannel`): what a send queues is encrypted as it is queued, what a read brings is decrypted
before the frames are split, and the sockets and the epoll loop stay the same.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import selectors
import socket
import ssl
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from typing import Any

import orjson
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

HOST = "127.0.0.1"
SETUP_BATCH = 50  # clients set up together: keeps the server's accept backlog short
SETUP_TIMEOUT_S = 10.0  # per socket operation
SETUP_DEADLINE_S = 120.0  # for all of a process's clients
DRAIN_TIMEOUT_S = 5.0  # after a phase, for what is still in flight (default of --drain)
READ_SIZE = 256 * 1024
SDP_THRESHOLD = 1000  # a message of at least this many bytes is an SDP offer, else a candidate
CANDIDATE = (
    "candidate:842163049 1 udp 1677729535 203.0.113.7 46154 typ srflx raddr 192.168.1.20"
    " rport 46154 generation 0 ufrag EsAw network-cost 999"
)
SDP = (
    "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "a=group:BUNDLE 0 1\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS stream\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\nc=IN IP4 0.0.0.0\r\n"
    "a=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n"
    "a=ice-options:trickle\r\na=fingerprint:sha-256 D1:B3:E7:0C:71:D8:05:39:6E:A3:F0:12:55:"
    "44:7E:9C:3B:26:AA:10:5F:82:C4:E9:1D:73:B8:06:4A:F2:DE:91\r\na=setup:actpass\r\na=mid:0\r\n"
    "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\na=sendrecv\r\n"
    "a=msid:stream track-audio\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n"
    "a=rtcp-fb:111 transport-cc\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n"
    "a=ssrc:3735928559 cname:4TOk42mSjXCkVIa6\r\n"
)
# Plain ints: comparing against the IntEnum members costs more in the per-frame loop.
TEXT, CLOSE, PING = int(Opcode.TEXT), int(Opcode.CLOSE), int(Opcode.PING)


def client_frame(payload: bytes) -> bytes:
    """A masked text frame with a zero mask key: the payload goes out as it is."""
    length = len(payload)
    if length < 126:
        header = bytes((0x81, 0x80 | length))
    elif length < 65536:
        header = bytes((0x81, 0x80 | 126)) + length.to_bytes(2)
    else:
        header = bytes((0x81, 0x80 | 127)) + length.to_bytes(8)
    return header + b"\0\0\0\0" + payload


def split_frames(buf: bytes) -> tuple[list[tuple[int, int, int]], int]:
    """Whole unmasked server frames in `buf` as (opcode, start, end) of payload; bytes used."""
    frames = []
    end = len(buf)
    start = 0
    while end - start >= 2:
        length = buf[start + 1] & 0x7F
        header = 2
        if length == 126:
            header = 4
            length = int.from_bytes(buf[start + 2 : start + 4])
        elif length == 127:
            header = 10
            length = int.from_bytes(buf[start + 2 : start + 10])
        if end - start < header + length:
            break
        frames.append((buf[start] & 0x0F, start + header, start + header + length))
        start += header + length
    return frames, start


def fill(text: str, room: int) -> str:
    """A prefix of `text` (repeated) whose JSON encoding takes exactly `room` bytes."""
    source = text * (room // max(1, len(text)) + 2)
    low, high = 0, min(len(source), room)
    while low < high:  # longest prefix whose encoding fits
        middle = (low + high + 1) // 2
        if len(orjson.dumps(source[:middle])) - 2 <= room:
            low = middle
        else:
            high = middle - 1
    prefix = source[:low]
    return prefix + "x" * (room - (len(orjson.dumps(prefix)) - 2))


def sized(build: Callable[[str], dict[str, Any]], size: int, text: str) -> bytes:
    """`build(filler)` encoded in exactly `size` bytes."""
    room = size - len(orjson.dumps(build("")))
    if room < 0:
        raise SystemExit(f"size {size} is too small for {build('')}")
    data = orjson.dumps(build(fill(text, room)))
    assert len(data) == size, (len(data), size)
    return data


# ---------------------------------------------------------------------------------------------
# TLS


class TlsChannel:
    """One client's TLS, sans-I/O: `seal` plaintext into records, `open` records into plaintext;
    the caller moves the bytes over its socket."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=HOST)
        while not self._handshake_done():  # on the socket, still blocking
            sock.sendall(self.outgoing.read())
            data = sock.recv(READ_SIZE)
            if not data:
                raise ConnectionError("server closed the connection in the TLS handshake")
            self.incoming.write(data)
        sock.sendall(self.outgoing.read())

    def _handshake_done(self) -> bool:
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            return False
        return True

    def seal(self, plaintext: bytes) -> bytes:
        self.tls.write(plaintext)
        return self.outgoing.read()

    def open(self, records: bytes) -> bytes:
        """The plaintext of every whole record received so far (b"" if none is whole yet)."""
        self.incoming.write(records)
        chunks = []
        while True:
            try:
                chunks.append(self.tls.read(READ_SIZE))
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                return b"".join(chunks)


def tls_context(ca_file: str | None) -> ssl.SSLContext | None:
    return None if ca_file is None else ssl.create_default_context(cafile=ca_file)


# ---------------------------------------------------------------------------------------------
# Set-up: blocking clients on websockets' ClientProtocol


class SetupClient:
    """A blocking WebSocket client for the set-up phase."""

    def __init__(self, port: int, path: str, context: ssl.SSLContext | None) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=SETUP_TIMEOUT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.tls = None if context is None else TlsChannel(self.sock, context)
        scheme = "ws" if context is None else "wss"
        self.proto = ClientProtocol(parse_uri(f"{scheme}://{HOST}:{port}{path}"), max_size=None)
        self.proto.send_request(self.proto.connect())
        self._flush()
        self.messages: deque[dict[str, Any]] = deque()
        self.name = ""  # user id, peer id or pair name
        self.peer_name = ""
        self.call_id = ""

    def finish_handshake(self) -> None:
        while not self._receive_some():
            pass

    def send(self, message: dict[str, Any]) -> None:
        self.proto.send_text(orjson.dumps(message))
        self._flush()

    def expect(self, **fields: object) -> dict[str, Any]:
        """The next message, which must carry `fields`: set-up has exactly one script."""
        while not self.messages:
            self._receive_some()
        message = self.messages.popleft()
        if any(message.get(key) != value for key, value in fields.items()):
            raise RuntimeError(f"{self.name}: expected {fields}, got {message}")
        return message

    def skip_to(self, **fields: object) -> dict[str, Any]:
        """The next message carrying `fields`, dropping others (room member notices, say)."""
        while True:
            while not self.messages:
                self._receive_some()
            message = self.messages.popleft()
            if all(message.get(key) == value for key, value in fields.items()):
                return message
            if message.get("type") in ("error", "ERROR"):
                raise RuntimeError(f"{self.name}: waiting for {fields}, got {message}")

    def _receive_some(self) -> bool:
        """Read once; True when the handshake response was among what arrived."""
        data = self.sock.recv(READ_SIZE)
        if not data:
            raise ConnectionError(f"{self.name}: server closed the connection during set-up")
        if self.tls is not None:
            data = self.tls.open(data)
        self.proto.receive_data(data)
        self._flush()
        responded = False
        for event in self.proto.events_received():
            if isinstance(event, Response):
                if self.proto.handshake_exc is not None:
                    raise self.proto.handshake_exc
                responded = True
            elif isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                self.messages.append(orjson.loads(event.data))
        return responded

    def _flush(self) -> None:
        data = b"".join(self.proto.data_to_send())
        self.sock.sendall(data if self.tls is None else self.tls.seal(data))


def path_of(protocol: str, name: str) -> str:
    return f"/peerjs?key=peerjs&id={name}&token=t{name}" if protocol == "peerjs" else "/ws"


@dataclass(frozen=True)
class Placement:
    """Which of the target's ports (a cluster's nodes) each client connects to.

    With one port, every client goes there. With several, pair ``n``'s first party goes to
    port ``n % len(ports)``, and its peer to the same port (``same``: a call within one node),
    to the next one (``cross``: a call across two nodes), or, in ``half``, alternately to the
    same and the next (pairs 0, 2, 4... same-node), so that a run has both kinds of call in
    equal numbers and a node both kinds of party. Clients without a peer (idle ones) go round
    the ports.
    """

    ports: tuple[int, ...]
    mode: str = "same"

    def of_pair(self, pair: int, side: str) -> int:
        first = pair % len(self.ports)
        cross = self.mode == "cross" or (self.mode == "half" and pair % 2 == 1)
        return self.ports[(first + (side == "b" and cross)) % len(self.ports)]

    def of_client(self, index: int) -> int:
        return self.ports[index % len(self.ports)]


PLACEMENTS = ("same", "cross", "half")


def connect(
    protocol: str, ports: Sequence[int], names: Sequence[str], context: ssl.SSLContext | None
) -> list[SetupClient]:
    """Open and greet one batch (client ``names[i]`` on ``ports[i]``): handshake, then `hello`
    (callbox) or the `OPEN` (PeerJS)."""
    clients = []
    for port, name in zip(ports, names, strict=True):
        client = SetupClient(port, path_of(protocol, name), context)
        client.name = name
        clients.append(client)
    for client in clients:
        client.finish_handshake()
    if protocol == "callbox":
        for client in clients:
            client.send({"type": "hello", "user_id": client.name})
        for client in clients:
            client.expect(type="welcome", user_id=client.name)
    elif protocol == "peerjs":
        for client in clients:
            client.expect(type="OPEN")
    return clients


def set_up_pairs(
    protocol: str,
    placement: Placement,
    first: int,
    count: int,
    *,
    in_call: bool,
    context: ssl.SSLContext | None,
) -> list[SetupClient]:
    """Pairs first..first+count-1, peers adjacent; in a 1:1 call if `in_call` (callbox)."""
    clients: list[SetupClient] = []
    for batch in range(first, first + count, SETUP_BATCH // 2):
        indexes = range(batch, min(batch + SETUP_BATCH // 2, first + count))
        names = [f"u{index}{side}" for index in indexes for side in "ab"]
        ports = [placement.of_pair(index, side) for index in indexes for side in "ab"]
        pairs = connect(protocol, ports, names, context)
        for a, b in zip(pairs[::2], pairs[1::2], strict=True):
            a.peer_name, b.peer_name = b.name, a.name
            a.call_id = b.call_id = f"bench-call-{a.name[1:-1]}"
        if protocol == "bare":
            for client in pairs:
                client.peer_name = f"p{client.name[1:-1]}"  # the pair's name is the address
                client.send({"pair": client.peer_name})
            for client in pairs:
                client.expect(paired=client.peer_name)
        elif protocol == "callbox" and in_call:
            set_up_calls(list(zip(pairs[::2], pairs[1::2], strict=True)))
        clients += pairs
    return clients


def set_up_calls(pairs: Sequence[tuple[SetupClient, SetupClient]]) -> None:
    for a, b in pairs:
        a.send(call_initiate(a.call_id, b.name))
    for a, b in pairs:
        a.expect(type="call_ringing", call_id=a.call_id)
        b.expect(type="call_incoming", call_id=a.call_id)
        b.send({"type": "call_answer", "call_id": a.call_id})
    for a, b in pairs:
        a.expect(type="call_accepted", call_id=a.call_id)
        b.expect(type="call_accepted", call_id=a.call_id)


def call_initiate(call_id: str, to: str) -> dict[str, Any]:
    media = {"audio": True, "video": True}
    return {"type": "call_initiate", "call_id": call_id, "to": [to], "media": media}


def set_up_rooms(
    placement: Placement, first: int, rooms: int, size: int, context: ssl.SSLContext | None
) -> list[SetupClient]:
    """`rooms` rooms of `size` callbox members each; returns when every member has joined."""
    clients: list[SetupClient] = []
    for room in range(first, first + rooms):
        names = [f"r{room}m{member}" for member in range(size)]
        ports = [placement.of_client(member) for member in range(size)]
        members = connect("callbox", ports, names, context)
        for client in members:
            client.peer_name = f"room-{room}"
            client.send({"type": "room_join", "room": client.peer_name})
            client.skip_to(type="room_joined", room=client.peer_name)
        for client in members[:-1]:  # each sees every later member join, the last one last
            client.skip_to(type="room_member_joined", user_id=members[-1].name)
        clients += members
    return clients


# ---------------------------------------------------------------------------------------------
# Messages


def relay_message(protocol: str, client: SetupClient, size: int) -> tuple[bytes, bytes]:
    """What `client` streams to its peer, `size` bytes, and what the relayed copy contains."""
    candidate = size < SDP_THRESHOLD
    to = client.peer_name

    def build(filler: str) -> dict[str, Any]:
        ice = {"candidate": filler, "sdpMid": "0", "sdpMLineIndex": 0}
        if protocol == "bare":
            return {"to": to, "candidate": ice} if candidate else {"to": to, "sdp": filler}
        if protocol == "callbox":
            base = {"call_id": client.call_id, "to": to}
            if candidate:
                return {"type": "ice_candidate", **base, "candidate": ice}
            return {"type": "sdp_offer", **base, "sdp": filler}
        connection = {"type": "media", "connectionId": "mc_4vmxjtyt1fc"}
        if candidate:
            return {"type": "CANDIDATE", "dst": to, "payload": {"candidate": ice, **connection}}
        offer = {"sdp": {"type": "offer", "sdp": filler}, **connection}
        return {"type": "OFFER", "dst": to, "payload": offer}

    marker = {
        ("bare", True): b'{"to":"p',
        ("bare", False): b'{"to":"p',
        ("callbox", True): b'"type":"ice_candidate"',
        ("callbox", False): b'"type":"sdp_offer"',
        ("peerjs", True): b'"type":"CANDIDATE"',
        ("peerjs", False): b'"type":"OFFER"',
    }[protocol, candidate]
    return sized(build, size, CANDIDATE if candidate else SDP), marker


def broadcast_message(client: SetupClient, size: int) -> bytes:
    def build(filler: str) -> dict[str, Any]:
        return {"type": "room_broadcast", "room": client.peer_name, "data": {"note": filler}}

    return sized(build, size, CANDIDATE)


# ---------------------------------------------------------------------------------------------
# Streaming


class StreamClient:
    """One client during the measured phases."""

    def __init__(self, setup: SetupClient) -> None:
        self.setup = setup
        self.sock = setup.sock
        self.sock.setblocking(False)
        self.tls = setup.tls
        self.frame = b""
        self.marker = b""
        self.peer: StreamClient = self  # whose sends this client's receipts pay for
        self.per_send = 1  # receipts that pay for one send of `peer`'s
        self.fanout = 1  # deliveries per message sent
        self.credit = 0
        self.pending = b""  # received bytes not yet forming a whole frame
        self.unsent = b""  # frames the kernel would not take yet
        self.sent = 0
        self.received = 0
        self.unexpected = 0
        self.unexpected_sample = b""
        self.sent_at: deque[float] = deque()  # latency phase: send times not yet matched

    def recv(self) -> bytes:
        """What a read brings (decrypted, with TLS); never empty: EOF raises."""
        data = self.sock.recv(READ_SIZE)
        if not data:
            raise ConnectionError(f"{self.setup.name}: server closed the connection")
        return data if self.tls is None else self.tls.open(data)

    def receive(self) -> int:
        """Read what is there; the number of expected messages it completed."""
        data = self.recv()
        buf = self.pending + data if self.pending else data
        frames, used = split_frames(buf)
        count = 0
        marker = self.marker
        for opcode, start, end in frames:
            if opcode == TEXT and buf.find(marker, start, end) >= 0:
                count += 1
            elif opcode == CLOSE:
                raise ConnectionError(f"{self.setup.name}: server closed: {buf[start:end]!r}")
            elif opcode != PING:  # heartbeat pings need no pong: we keep sending
                self.unexpected += 1
                self.unexpected_sample = buf[start : min(end, start + 200)]
        self.pending = buf[used:]
        self.received += count
        return count


class Streamer:
    """The epoll loop shared by the phases of one generator process."""

    def __init__(self, clients: list[StreamClient], drain_s: float = DRAIN_TIMEOUT_S) -> None:
        self.clients = clients
        self.drain_s = drain_s  # the longest a phase waits for what is in flight at its end
        self.selector = selectors.EpollSelector()
        for client in clients:
            self.selector.register(client.sock, selectors.EVENT_READ, client)

    def send(self, client: StreamClient, count: int, frame: bytes | None = None) -> None:
        data = (frame or client.frame) * count
        if client.tls is not None:  # sealed in send order, so queued records stay in order
            data = client.tls.seal(data)
        client.sent += count
        if client.unsent:
            client.unsent += data
            return
        try:
            sent = client.sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            client.unsent = data[sent:]
            self.selector.modify(client.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)

    def send_unsent(self, client: StreamClient) -> None:
        try:
            sent = client.sock.send(client.unsent)
        except BlockingIOError:
            return
        client.unsent = client.unsent[sent:]
        if not client.unsent:
            self.selector.modify(client.sock, selectors.EVENT_READ, client)

    def poll(self, timeout: float, on_receipt: Callable[[StreamClient, int], None]) -> None:
        for key, events in self.selector.select(max(0.0, timeout)):
            client = key.data
            if events & selectors.EVENT_WRITE:
                self.send_unsent(client)
            if events & selectors.EVENT_READ and (count := client.receive()):
                on_receipt(client, count)

    def closed_loop(self, window: int, t_start: float, t_end: float) -> dict[str, Any]:
        """Each receipt pays for sends of the receiver's `peer`: in flight stays constant."""

        def on_receipt(client: StreamClient, count: int) -> None:
            payer = client.peer
            payer.credit += count
            if payer.credit >= client.per_send:
                sends, payer.credit = divmod(payer.credit, client.per_send)
                self.send(payer, sends)

        for client in self.clients:
            client.credit = 0
            self.send(client, window)
        return self._window(t_start, t_end, on_receipt)

    def open_loop(self, rate: float, t_start: float, t_end: float) -> dict[str, Any]:
        """RATE messages a second, round-robin over the clients; latency of the window's ones."""
        latencies: list[float] = []
        clock = time.perf_counter
        offset = time.monotonic() - clock()  # the window's bounds are on the monotonic clock
        p_start, p_end = t_start - offset, t_end - offset

        def on_receipt(client: StreamClient, count: int) -> None:
            now = clock()
            sent_at = client.peer.sent_at
            for _ in range(count):
                started = sent_at.popleft()
                if p_start <= started < p_end:
                    latencies.append(now - started)

        clients = self.clients
        origin = clock()
        due = 0
        n = 0
        opened: tuple[float, float] | None = None
        while (now := clock()) < p_end:
            if opened is None and now >= p_start:
                opened = (now, cpu_seconds())
            target = int((now - origin) * rate)
            while due < target:
                client = clients[n % len(clients)]
                n += 1
                due += 1
                client.sent_at.append(clock())
                self.send(client, 1)
            self.poll(min(p_end - now, 1 / rate), on_receipt)
        assert opened is not None
        result: dict[str, Any] = {
            "seconds": clock() - opened[0],
            "cpu_seconds": cpu_seconds() - opened[1],
        }
        self.drain(on_receipt)
        latencies.sort()
        result |= {
            "received": len(latencies),
            "latencies": latencies[:: max(1, len(latencies) // 20000)],
        }
        return result | self._unexpected()

    def _window(
        self, t_start: float, t_end: float, on_receipt: Callable[[StreamClient, int], None]
    ) -> dict[str, Any]:
        opened: tuple[float, int, float] | None = None
        while (now := time.monotonic()) < t_end:
            if opened is None and now >= t_start:
                opened = (now, sum(c.received for c in self.clients), cpu_seconds())
            self.poll((t_start if opened is None else t_end) - now, on_receipt)
        if opened is None:
            raise RuntimeError("the measured window never opened")
        result = {
            "seconds": time.monotonic() - opened[0],
            "received": sum(c.received for c in self.clients) - opened[1],
            "cpu_seconds": cpu_seconds() - opened[2],
        }
        self.drain(lambda client, count: None)
        return result | self._unexpected()

    def drain(self, on_receipt: Callable[[StreamClient, int], None]) -> None:
        """Stop sending; wait for what is in flight, so the next phase starts from nothing."""
        deadline = time.monotonic() + self.drain_s
        while time.monotonic() < deadline and self.outstanding() > 0:
            self.poll(0.05, on_receipt)

    def outstanding(self) -> int:
        expected = sum(c.sent * c.fanout for c in self.clients)
        return expected - sum(c.received for c in self.clients)

    def _unexpected(self) -> dict[str, Any]:
        samples = [c.unexpected_sample for c in self.clients if c.unexpected]
        result = {
            "unexpected": sum(c.unexpected for c in self.clients),
            "unexpected_sample": samples[0].decode(errors="replace") if samples else "",
        }
        for client in self.clients:
            client.unexpected = 0
            client.unexpected_sample = b""
        return result


# ---------------------------------------------------------------------------------------------
# Call set-ups: a per-pair script, driven by what arrives


@dataclass
class CallPair:
    a: StreamClient
    b: StreamClient
    calls: int = 0
    completed: int = 0
    candidates: dict[str, int] = field(default_factory=dict)
    ended: int = 0

    @property
    def call_id(self) -> str:
        return f"{self.a.setup.call_id}-{self.calls}"


class CallScript:
    """Whole calls back to back on every pair; each step is triggered by what arrives."""

    def __init__(self, streamer: Streamer, pairs: list[CallPair]) -> None:
        self.streamer = streamer
        self.pairs = pairs
        self.by_client: dict[StreamClient, tuple[CallPair, str]] = {}
        for pair in pairs:
            self.by_client[pair.a] = (pair, "a")
            self.by_client[pair.b] = (pair, "b")
        self.candidate = {"candidate": CANDIDATE, "sdpMid": "0", "sdpMLineIndex": 0}
        self.sdp = fill(SDP, 2500)
        self.unexpected: list[dict[str, Any]] = []
        self.stopping = False

    def run(self, t_start: float, t_end: float) -> dict[str, Any]:
        pairs = self.pairs
        for pair in pairs:
            self.start_call(pair)
        opened: tuple[float, int, float] | None = None
        while (now := time.monotonic()) < t_end:
            if opened is None and now >= t_start:
                opened = (now, sum(p.completed for p in pairs), cpu_seconds())
            self.poll((t_start if opened is None else t_end) - now)
        assert opened is not None
        result = {
            "seconds": time.monotonic() - opened[0],
            "received": sum(p.completed for p in pairs) - opened[1],
            "cpu_seconds": cpu_seconds() - opened[2],
        }
        self.stopping = True  # let the calls in progress finish
        deadline = time.monotonic() + self.streamer.drain_s
        while time.monotonic() < deadline and any(p.completed < p.calls for p in pairs):
            self.poll(0.05)
        sample = orjson.dumps(self.unexpected[0]).decode()[:200] if self.unexpected else ""
        return result | {"unexpected": len(self.unexpected), "unexpected_sample": sample}

    def send(self, client: StreamClient, message: dict[str, Any]) -> None:
        self.streamer.send(client, 1, client_frame(orjson.dumps(message)))

    def start_call(self, pair: CallPair) -> None:
        pair.calls += 1
        pair.candidates = {"a": 0, "b": 0}
        pair.ended = 0
        self.send(pair.a, call_initiate(pair.call_id, pair.b.setup.name))

    def relay(self, client: StreamClient, kind: str, body: dict[str, Any]) -> None:
        pair, side = self.by_client[client]
        to = (pair.b if side == "a" else pair.a).setup.name
        self.send(client, {"type": kind, "call_id": pair.call_id, "to": to, **body})

    def handle(self, client: StreamClient, message: dict[str, Any]) -> None:
        pair, side = self.by_client[client]
        kind = message.get("type")
        if message.get("call_id") != pair.call_id:
            self.unexpected.append(message)
        elif kind == "call_incoming":
            self.send(client, {"type": "call_answer", "call_id": pair.call_id})
        elif kind == "call_accepted" and side == "a":
            self.relay(client, "sdp_offer", {"sdp": self.sdp})
        elif kind in ("sdp_offer", "sdp_answer"):
            if kind == "sdp_offer":
                self.relay(client, "sdp_answer", {"sdp": self.sdp})
            for _ in range(4):
                self.relay(client, "ice_candidate", {"candidate": self.candidate})
        elif kind == "ice_candidate":
            pair.candidates[side] += 1
            if pair.candidates == {"a": 4, "b": 4}:
                self.send(pair.a, {"type": "hangup", "call_id": pair.call_id})
        elif kind == "call_ended":
            pair.ended += 1
            if pair.ended == 2:
                pair.completed += 1
                if not self.stopping:
                    self.start_call(pair)
        elif kind not in ("call_ringing", "call_accepted"):
            self.unexpected.append(message)

    def poll(self, timeout: float) -> None:
        for key, events in self.streamer.selector.select(max(0.0, timeout)):
            client = key.data
            if events & selectors.EVENT_WRITE:
                self.streamer.send_unsent(client)
            if events & selectors.EVENT_READ:
                self.receive(client)

    def receive(self, client: StreamClient) -> None:
        data = client.recv()
        buf = client.pending + data if client.pending else data
        frames, used = split_frames(buf)
        client.pending = buf[used:]
        for opcode, start, end in frames:
            if opcode == TEXT:
                client.received += 1
                self.handle(client, orjson.loads(buf[start:end]))
            elif opcode == CLOSE:
                raise ConnectionError(f"{client.setup.name}: server closed: {buf[start:end]!r}")


# ---------------------------------------------------------------------------------------------
# Worker processes


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Share:
    """What one generator process sets up."""

    first: int
    count: int


def set_up(args: argparse.Namespace, share: Share) -> list[SetupClient]:
    context = tls_context(args.tls)
    if args.workload in ("pairs", "callers"):
        in_call = args.workload == "pairs"
        return set_up_pairs(
            args.protocol, placement(args), share.first, share.count, in_call=in_call,
            context=context,
        )  # fmt: skip
    if args.workload == "rooms":
        return set_up_rooms(placement(args), share.first, share.count, args.room_size, context)
    raise ValueError(args.workload)


def placement(args: argparse.Namespace) -> Placement:
    return Placement(tuple(args.port), args.placement)


def run_phase(
    args: argparse.Namespace, streamer: Streamer, order: tuple[str, float, float, float]
) -> dict[str, Any]:
    """One phase: (its spec, the window's start and end, this process's share of a rate)."""
    phase, t_start, t_end, rate_share = order
    kind, *params = phase.split(":")
    clients = streamer.clients
    for client in clients:
        client.sent = client.received = 0
    if kind == "relay":
        size = int(params[0])
        for client in clients:
            client.frame, client.marker = message_frame(args.protocol, client.setup, size)
        return streamer.closed_loop(args.window, t_start, t_end)
    if kind == "latency":
        size = int(params[0])
        for client in clients:
            client.frame, client.marker = message_frame(args.protocol, client.setup, size)
            client.sent_at.clear()
        return streamer.open_loop(rate_share, t_start, t_end)
    if kind == "fanout":
        size = int(params[0])
        for client in clients:
            client.frame = client_frame(broadcast_message(client.setup, size))
            client.marker = b'"type":"room_message"'
            client.peer = client
            client.per_send = args.room_size - 1
            client.fanout = args.room_size - 1
        return streamer.closed_loop(args.window, t_start, t_end)
    if kind == "setups":
        pairs = [CallPair(a, b) for a, b in zip(clients[::2], clients[1::2], strict=True)]
        return CallScript(streamer, pairs).run(t_start, t_end)
    raise ValueError(phase)


def message_frame(protocol: str, setup: SetupClient, size: int) -> tuple[bytes, bytes]:
    message, marker = relay_message(protocol, setup, size)
    return client_frame(message), marker


def worker(args: argparse.Namespace, share: Share, pipe: Pipe) -> None:
    """One generator process: set up its clients, then run each phase it is given."""
    try:
        setups = set_up(args, share)
        clients = [StreamClient(setup) for setup in setups]
        if args.workload in ("pairs", "callers"):
            for left, right in zip(clients[::2], clients[1::2], strict=True):
                left.peer, right.peer = right, left
        streamer = Streamer(clients, args.drain)
        pipe.send("ready")
        while (order := pipe.recv()) is not None:
            pipe.send(run_phase(args, streamer, order))
    except Exception:
        pipe.send(traceback.format_exc())


def shares(total: int, procs: int) -> list[Share]:
    counts = [total // procs + (i < total % procs) for i in range(procs)]
    return [Share(sum(counts[:i]), count) for i, count in enumerate(counts) if count]


def combine(phase: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    seconds = max(r["seconds"] for r in results)
    received = sum(r["received"] for r in results)
    cpu = sum(r["cpu_seconds"] for r in results)
    summary: dict[str, Any] = {
        "phase": phase,
        "seconds": round(seconds, 3),
        "received": received,
        "per_s": round(received / seconds, 1),
        "generator_cpu_pct": round(100 * cpu / seconds, 1),
        "unexpected": sum(r["unexpected"] for r in results),
        "unexpected_sample": next((r["unexpected_sample"] for r in results if r["unexpected"]), ""),
    }
    if phase.startswith("latency"):
        latencies = sorted(x for r in results for x in r["latencies"])
        if not latencies:
            raise SystemExit("latency phase: no message came back")
        for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)):
            index = min(len(latencies) - 1, int(q * len(latencies)))
            summary[f"{name}_us"] = round(latencies[index] * 1e6, 1)
    return summary


def run_idle(args: argparse.Namespace) -> None:
    """Connect clients in steps; after each, report and wait for the runner to measure."""
    clients: list[SetupClient] = []
    for step in args.steps:
        while len(clients) < step:
            indexes = range(len(clients), min(step, len(clients) + SETUP_BATCH))
            ports = [placement(args).of_client(n) for n in indexes]
            names = [f"idle{n}" for n in indexes]
            clients += connect(args.protocol, ports, names, tls_context(args.tls))
        print(f"idle-step {len(clients)}", flush=True)
        if not sys.stdin.readline():
            return
    print("done", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("protocol", choices=["bare", "callbox", "peerjs"])
    parser.add_argument(
        "--port", type=int, nargs="+", required=True, help="several: a cluster's nodes"
    )
    parser.add_argument(
        "--placement", choices=PLACEMENTS, default="same", help="with several ports: Placement"
    )
    parser.add_argument(
        "--workload", choices=["pairs", "callers", "rooms", "idle"], default="pairs"
    )
    parser.add_argument("--pairs", type=int, default=100, help="pairs, or rooms for rooms")
    parser.add_argument("--room-size", type=int, default=10)
    parser.add_argument("--phase", action="append", default=[], help="see the docstring")
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 1000, 5000])
    parser.add_argument("--window", type=int, default=16, help="messages in flight per client")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--procs", type=int, default=1)
    parser.add_argument(
        "--drain",
        type=float,
        default=DRAIN_TIMEOUT_S,
        help="s a phase waits at most for what is in flight at its end (a slow target's"
        " leftovers would count as the next phase's unexpected frames)",
    )
    parser.add_argument("--tls", metavar="CAFILE", help="connect over TLS, trusting this CA")
    args = parser.parse_args()
    if args.workload == "idle":
        run_idle(args)
        return

    pipes: list[Pipe] = []
    processes = []
    for share in shares(args.pairs, args.procs):
        ours, theirs = multiprocessing.Pipe()
        process = multiprocessing.Process(target=worker, args=(args, share, theirs), daemon=True)
        process.start()
        pipes.append(ours)
        processes.append(process)
    for pipe in pipes:
        status = pipe.recv() if pipe.poll(SETUP_DEADLINE_S) else "timed out"
        if status != "ready":
            raise SystemExit(f"set-up failed: {status}")
    for phase in args.phase or ["relay:200"]:
        rate = float(phase.split(":")[2]) if phase.startswith("latency") else 0.0
        t_start = time.monotonic() + args.warmup
        t_end = t_start + args.seconds
        for pipe in pipes:
            pipe.send((phase, t_start, t_end, rate / len(pipes)))
        time.sleep(max(0.0, t_start - time.monotonic()))
        print(f"window-start {phase}", flush=True)
        time.sleep(max(0.0, t_end - time.monotonic()))
        print(f"window-end {phase}", flush=True)
        results = []
        for pipe in pipes:
            if not pipe.poll(30 + args.drain):
                raise SystemExit("a generator process did not report")
            result = pipe.recv()
            if isinstance(result, str):
                raise SystemExit(f"generator failed:\n{result}")
            results.append(result)
        summary = combine(phase, results)
        print("result", orjson.dumps(summary).decode(), flush=True)
        if summary["unexpected"]:
            print(f"unexpected frames, e.g. {summary['unexpected_sample']}", file=sys.stderr)
    for pipe in pipes:
        pipe.send(None)
    for process in processes:
        process.join(10)
    print("done", flush=True)


if __name__ == "__main__":
    main()
