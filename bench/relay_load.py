"""Relay load generator: pairs of WebSocket clients streaming ICE-candidate-sized messages.

Each client keeps at most ``--window`` of its messages in flight (sent, not yet received by its
peer) and sends one more per receipt, for ``--warmup`` + ``--seconds``; the result is messages
relayed per second over the measured window, and the generator's own CPU time in it, so a
reader can tell a saturated server from a saturated generator.

Set-up (opening handshake, pairing or login + call set-up) speaks through websockets'
sans-I/O `ClientProtocol`. The measured stream does not: receiving and sending a message
through it costs ~5 us of CPU against ~0.6 us here (measured on the benchmark machine), i.e.
a third of the generator's core at the fast relay's rate. Instead each client sends one
pre-masked frame (serialized by websockets once, so its mask key repeats; servers cannot
tell) and the receive path only splits unmasked server frames and checks each is the relayed
message.

Protocols: ``bare`` for bench/bare_relays.py, ``callbox`` for ``python -m callbox serve``
(hello, call_initiate -> call_answer -> call_accepted, then ice_candidate).

Output, on stdout: ``window-start`` and ``window-end`` as the measured window opens and closes
(the runner samples the server's CPU then), then ``result {json}``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import selectors
import socket
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection as Pipe
from typing import Any

import orjson
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

HOST = "127.0.0.1"
SETUP_BATCH_PAIRS = 50  # pairs set up together: keeps the server's accept backlog short
SETUP_TIMEOUT_S = 10.0  # per socket operation
SETUP_DEADLINE_S = 120.0  # for all of a process's pairs
READ_SIZE = 256 * 1024
CANDIDATE = (
    "candidate:842163049 1 udp 1677729535 203.0.113.7 46154 typ srflx raddr 192.168.1.20"
    " rport 46154 generation 0 ufrag EsAw network-cost 999"
)
# What every relayed frame contains; anything else (an error, say) is counted as unexpected.
RELAYED_MARKER = {"bare": b'{"to":"p', "callbox": b'"type":"ice_candidate"'}
# Plain ints: comparing against the IntEnum members costs more in the per-frame loop.
TEXT, CLOSE, PING = int(Opcode.TEXT), int(Opcode.CLOSE), int(Opcode.PING)


class SetupClient:
    """A blocking WebSocket client for the set-up phase, on websockets' ClientProtocol."""

    def __init__(self, port: int, path: str) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=SETUP_TIMEOUT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.proto = ClientProtocol(parse_uri(f"ws://{HOST}:{port}{path}"))
        self.proto.send_request(self.proto.connect())
        self._flush()
        self._messages: list[dict[str, Any]] = []

    def finish_handshake(self) -> None:
        while not self._receive_some():
            pass

    def send(self, message: dict[str, Any]) -> None:
        self.proto.send_text(orjson.dumps(message))
        self._flush()

    def expect(self, **fields: object) -> None:
        """Read the next message, which must carry `fields`: set-up has exactly one script."""
        while not self._messages:
            self._receive_some()
        message = self._messages.pop(0)
        if any(message.get(key) != value for key, value in fields.items()):
            raise RuntimeError(f"expected {fields}, got {message}")

    def _receive_some(self) -> bool:
        """Read once; True when the handshake response was among what arrived."""
        data = self.sock.recv(READ_SIZE)
        if not data:
            raise ConnectionError("server closed the connection during set-up")
        self.proto.receive_data(data)
        self._flush()
        responded = False
        for event in self.proto.events_received():
            if isinstance(event, Response):
                if self.proto.handshake_exc is not None:
                    raise self.proto.handshake_exc
                responded = True
            elif isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                self._messages.append(orjson.loads(event.data))
        return responded

    def _flush(self) -> None:
        self.sock.sendall(b"".join(self.proto.data_to_send()))


class StreamClient:
    """One side of a pair during the measured stream."""

    def __init__(self, setup: SetupClient, message: bytes, marker: bytes) -> None:
        self.sock = setup.sock
        self.sock.setblocking(False)
        self.frame = Frame(Opcode.TEXT, message).serialize(mask=True)
        self.marker = marker
        self.peer: StreamClient = self
        self.pending = b""  # received bytes not yet forming a whole frame
        self.unsent = b""  # frames the kernel would not take yet
        self.received = 0
        self.unexpected = 0
        self.unexpected_sample = b""

    def receive(self) -> int:
        """Read what is there; the number of relayed messages it completed."""
        data = self.sock.recv(READ_SIZE)
        if not data:
            raise ConnectionError("server closed the connection")
        buf = self.pending + data if self.pending else data
        end = len(buf)
        start = count = 0
        while end - start >= 2:
            length = buf[start + 1] & 0x7F  # server frames are unmasked
            header = 2
            if length == 126:
                header = 4
                length = int.from_bytes(buf[start + 2 : start + 4])
            elif length == 127:
                header = 10
                length = int.from_bytes(buf[start + 2 : start + 10])
            if end - start < header + length:
                break
            opcode = buf[start] & 0x0F
            if (
                opcode == TEXT
                and buf.find(self.marker, start + header, start + header + length) >= 0
            ):
                count += 1
            elif opcode == CLOSE:
                reason = buf[start + header : start + header + length]
                raise ConnectionError(f"server closed the connection: {reason!r}")
            elif opcode != PING:  # heartbeat pings need no pong: we keep sending
                self.unexpected += 1
                self.unexpected_sample = buf[start + header : start + header + min(length, 200)]
            start += header + length
        self.pending = buf[start:]
        self.received += count
        return count


def stream(
    clients: list[StreamClient], window: int, t_start: float, t_end: float
) -> dict[str, Any]:
    """Relay until t_end; counts and CPU time between t_start and t_end."""
    selector = selectors.EpollSelector()
    for client in clients:
        selector.register(client.sock, selectors.EVENT_READ, client)

    def send(client: StreamClient, count: int) -> None:
        data = client.frame * count
        if client.unsent:
            client.unsent += data
            return
        try:
            sent = client.sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            client.unsent = data[sent:]
            selector.modify(client.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)

    def send_unsent(client: StreamClient) -> None:
        try:
            sent = client.sock.send(client.unsent)
        except BlockingIOError:
            return
        client.unsent = client.unsent[sent:]
        if not client.unsent:
            selector.modify(client.sock, selectors.EVENT_READ, client)

    for client in clients:
        send(client, window)
    opened: tuple[float, int, float] | None = None
    while (now := time.monotonic()) < t_end:
        if opened is None and now >= t_start:
            opened = (now, sum(c.received for c in clients), cpu_seconds())
        for key, events in selector.select((t_start if opened is None else t_end) - now):
            client = key.data
            if events & selectors.EVENT_WRITE:
                send_unsent(client)
            if events & selectors.EVENT_READ and (count := client.receive()):
                send(client.peer, count)
    if opened is None:
        raise RuntimeError("the measured window never opened")
    elapsed = time.monotonic() - opened[0]
    samples = [c.unexpected_sample for c in clients if c.unexpected]
    return {
        "seconds": elapsed,
        "received": sum(c.received for c in clients) - opened[1],
        "cpu_seconds": cpu_seconds() - opened[2],
        "unexpected": sum(c.unexpected for c in clients),
        "unexpected_sample": samples[0].decode(errors="replace") if samples else "",
    }


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def sized(message: dict[str, Any], candidate_key: dict[str, Any], size: int) -> bytes:
    """`message` encoded in exactly `size` bytes, by sizing the candidate line."""
    candidate_key["candidate"] = ""
    room = size - len(orjson.dumps(message))
    if room < 0:
        raise SystemExit(f"--size {size} is too small for {message}")
    candidate_key["candidate"] = (CANDIDATE * (room // len(CANDIDATE) + 1))[:room]
    return orjson.dumps(message)


def candidate_init() -> dict[str, Any]:
    return {"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}


def set_up_bare(
    pairs: Sequence[tuple[SetupClient, SetupClient]], first: int, size: int
) -> Iterator[tuple[SetupClient, bytes]]:
    """Pair the clients; yields each client with the message it will stream."""
    for index, (a, b) in enumerate(pairs, first):
        a.send({"pair": f"p{index}"})
        b.send({"pair": f"p{index}"})
    for index, (a, b) in enumerate(pairs, first):
        for client in (a, b):
            client.expect(paired=f"p{index}")
            candidate = candidate_init()
            yield client, sized({"to": f"p{index}", "candidate": candidate}, candidate, size)


def set_up_callbox(
    pairs: Sequence[tuple[SetupClient, SetupClient]], first: int, size: int
) -> Iterator[tuple[SetupClient, bytes]]:
    """Log each pair in and put it in a 1:1 call; yields each client with its ice_candidate."""
    for index, (a, b) in enumerate(pairs, first):
        a.send({"type": "hello", "user_id": f"u{index}a"})
        b.send({"type": "hello", "user_id": f"u{index}b"})
    for index, (a, b) in enumerate(pairs, first):
        a.expect(type="welcome", user_id=f"u{index}a")
        b.expect(type="welcome", user_id=f"u{index}b")
        a.send(
            {
                "type": "call_initiate",
                "call_id": f"bench-call-{index}",
                "to": [f"u{index}b"],
                "media": {"audio": True, "video": False},
            }
        )
    for index, (a, b) in enumerate(pairs, first):
        call_id = f"bench-call-{index}"
        a.expect(type="call_ringing", call_id=call_id)
        b.expect(type="call_incoming", call_id=call_id)
        b.send({"type": "call_answer", "call_id": call_id})
    for index, (a, b) in enumerate(pairs, first):
        call_id = f"bench-call-{index}"
        for client, to in ((a, f"u{index}b"), (b, f"u{index}a")):
            client.expect(type="call_accepted", call_id=call_id)
            candidate = candidate_init()
            message = {"type": "ice_candidate", "call_id": call_id, "to": to}
            yield client, sized(message | {"candidate": candidate}, candidate, size)


SET_UP = {"bare": set_up_bare, "callbox": set_up_callbox}


def set_up(args: argparse.Namespace, first: int, count: int) -> list[StreamClient]:
    """Open and set up pairs first..first+count-1, a batch at a time; peers adjacent."""
    marker = RELAYED_MARKER[args.protocol]
    clients: list[StreamClient] = []
    for batch in range(first, first + count, SETUP_BATCH_PAIRS):
        batch_pairs = min(SETUP_BATCH_PAIRS, first + count - batch)
        pairs = [
            (SetupClient(args.port, args.path), SetupClient(args.port, args.path))
            for _ in range(batch_pairs)
        ]
        for a, b in pairs:
            a.finish_handshake()
            b.finish_handshake()
        for setup, message in SET_UP[args.protocol](pairs, batch, args.size):
            clients.append(StreamClient(setup, message, marker))
    for left, right in zip(clients[::2], clients[1::2], strict=True):
        left.peer, right.peer = right, left
    return clients


def worker(args: argparse.Namespace, first: int, count: int, pipe: Pipe) -> None:
    """One generator process: set up its pairs, report ready, stream in the window it is given."""
    try:
        clients = set_up(args, first, count)
        pipe.send("ready")
        t_start: float = pipe.recv()
        pipe.send(stream(clients, args.window, t_start, t_start + args.seconds))
    except Exception:
        pipe.send(traceback.format_exc())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("protocol", choices=sorted(SET_UP))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/ws")
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--size", type=int, default=256, help="bytes per client message")
    parser.add_argument("--window", type=int, default=16, help="messages in flight per client")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--procs", type=int, default=1)
    args = parser.parse_args()

    shares = [args.pairs // args.procs + (i < args.pairs % args.procs) for i in range(args.procs)]
    firsts = [sum(shares[:i]) for i in range(args.procs)]
    pipes: list[Pipe] = []
    processes = []
    for first, count in zip(firsts, shares, strict=True):
        ours, theirs = multiprocessing.Pipe()
        process = multiprocessing.Process(
            target=worker, args=(args, first, count, theirs), daemon=True
        )
        process.start()
        pipes.append(ours)
        processes.append(process)
    for pipe in pipes:
        status = pipe.recv() if pipe.poll(SETUP_DEADLINE_S) else "timed out"
        if status != "ready":
            raise SystemExit(f"set-up failed: {status}")
    t_start = time.monotonic() + args.warmup
    for pipe in pipes:
        pipe.send(t_start)
    time.sleep(max(0.0, t_start - time.monotonic()))
    print("window-start", flush=True)
    time.sleep(max(0.0, t_start + args.seconds - time.monotonic()))
    print("window-end", flush=True)
    results = []
    for pipe in pipes:
        if not pipe.poll(30):
            raise SystemExit("a generator process did not report")
        result = pipe.recv()
        if isinstance(result, str):
            raise SystemExit(f"generator failed:\n{result}")
        results.append(result)
    for process in processes:
        process.join(10)
    seconds = max(r["seconds"] for r in results)
    received = sum(r["received"] for r in results)
    cpu = sum(r["cpu_seconds"] for r in results)
    summary = {
        "protocol": args.protocol,
        "pairs": args.pairs,
        "procs": args.procs,
        "seconds": round(seconds, 3),
        "received": received,
        "msgs_per_s": round(received / seconds),
        "generator_cpu_s": round(cpu, 3),
        "generator_cpu_pct": round(100 * cpu / seconds, 1),
        "unexpected": sum(r["unexpected"] for r in results),
        "unexpected_sample": next((r["unexpected_sample"] for r in results if r["unexpected"]), ""),
    }
    print("result", orjson.dumps(summary).decode(), flush=True)
    if summary["unexpected"]:
        print(f"unexpected frames, e.g. {summary['unexpected_sample']}", file=sys.stderr)


if __name__ == "__main__":
    main()
