"""Server memory under connection churn: what connections that come and go leave behind.

    .venv/bin/python bench/churn.py [--rounds 7] [--per-round 3000] [--src DIR]

Starts ``python -m callbox serve`` (from ``--src`` if given, to compare two commits), then, each
round, opens ``--per-round`` WebSocket connections in batches of 100: a third say ``hello`` and
close cleanly, a third say ``hello`` and reset the TCP connection (SO_LINGER 0, an RST), a third
send a FIN without a close frame (half of those after ``hello``, half before). After each round
it prints the server's RSS. Issue 10 measured +7-10 MiB per 3,000 such connections, 77.6 MiB
over 21,000, before the reference cycles they left were broken. Loopback only; bounded by the
rounds; the server is stopped by its process id.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from run_relay_bench import HOST, free_port, stop, wait_listening
from websockets.client import ClientProtocol
from websockets.uri import parse_uri

BATCH = 100
USERS = 1000
"""Distinct user ids, reused round after round as returning users are: the server remembers
when each user was last seen (up to 65,536 of them, by design), which unique ids would grow."""
PAUSE_S = 2.5


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def handshake(port: int) -> tuple[socket.socket, ClientProtocol]:
    sock = socket.create_connection((HOST, port))
    proto = ClientProtocol(parse_uri(f"ws://{HOST}:{port}/ws"))
    proto.send_request(proto.connect())
    sock.sendall(b"".join(proto.data_to_send()))
    while proto.handshake_exc is None and proto.state.name == "CONNECTING":
        proto.receive_data(sock.recv(65536))
    return sock, proto


def say_hello(sock: socket.socket, proto: ClientProtocol, user: str) -> None:
    proto.send_text(orjson.dumps({"type": "hello", "user_id": user}))
    sock.sendall(b"".join(proto.data_to_send()))
    while not proto.events_received():
        proto.receive_data(sock.recv(65536))


def end(sock: socket.socket, proto: ClientProtocol, how: str) -> None:
    if how == "clean":
        proto.send_close(1000)
        sock.sendall(b"".join(proto.data_to_send()))
        sock.settimeout(5)
        while proto.state.name != "CLOSED":
            data = sock.recv(65536)
            if not data:
                break
            proto.receive_data(data)
    elif how == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def churn_round(port: int, count: int) -> None:
    ways = ("clean", "reset", "fin")
    for first in range(0, count, BATCH):
        opened = []
        for n in range(first, min(first + BATCH, count)):
            sock, proto = handshake(port)
            how = ways[n % 3]
            if how != "fin" or n % 2:
                say_hello(sock, proto, f"user-{n % USERS}")
            opened.append((sock, proto, how))
        for sock, proto, how in opened:
            end(sock, proto, how)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-round", type=int, default=3000)
    parser.add_argument("--src", type=Path, help="import callbox from this src/ directory")
    args = parser.parse_args()
    # Short grace and heartbeat: ended sessions and the heartbeat schedule's entries for closed
    # connections (kept until they come due) go within the pause after each round, so what
    # RSS still holds then is what the connections left behind.
    env = {**os.environ, "RECONNECT_GRACE_MS": "100", "HEARTBEAT_MS": "1000"}
    if args.src is not None:
        env["PYTHONPATH"] = str(args.src.resolve())
    port = free_port()
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "callbox", "serve", "--port", str(port)],
            stdout=log,
            stderr=log,
            env=env,
        )
        try:
            wait_listening(port, server)
            time.sleep(0.5)
            baseline = rss_kib(server.pid)
            print(f"baseline RSS {baseline / 1024:.1f} MiB")
            for round_no in range(1, args.rounds + 1):
                churn_round(port, args.per_round)
                time.sleep(PAUSE_S)
                grown = (rss_kib(server.pid) - baseline) / 1024
                print(
                    f"after {round_no * args.per_round:6,} connections: RSS +{grown:.1f} MiB",
                    flush=True,
                )
        finally:
            stop(server)
            log.seek(0)
            tracebacks = log.read().count(b"Traceback")
            print(f"tracebacks in the server's log: {tracebacks}")


if __name__ == "__main__":
    main()
