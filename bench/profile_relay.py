"""Where a relayed message's server CPU goes, without sockets: a per-stage breakdown and a profile.

Sets up PAIRS 1:1 calls in a real `Switchboard` (through `receive`, as the server does), then
times the relay path of the shell (`SignalingServer.on_text` minus the socket write) on a
~200-byte `ice_candidate` and a ~3 KB `sdp_offer`, and, separately, each stage of it: JSON
parse, schema validation, structuring, the switchboard's routing, encoding. The transport's
share (websockets' frame parsing and writing, the socket calls) is measured by the relay
benchmark against the bare relay, not here.

    .venv/bin/python bench/profile_relay.py [--n 200000] [--profile cprofile|none]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections.abc import Callable
from typing import Any

import orjson
import trio

from callbox import codec
from callbox.config import Config
from callbox.core.actions import Send
from callbox.core.switchboard import Switchboard
from callbox.messages import Hello, IceServer
from callbox.server.app import SignalingServer

PAIRS = 100
CANDIDATE = (
    "candidate:842163049 1 udp 1677729535 203.0.113.7 46154 typ srflx raddr 192.168.1.20"
    " rport 46154 generation 0 ufrag EsAw network-cost 999"
)


class FakeConnection:
    """What `SignalingServer` needs of a transport `Connection`; `send_text` keeps nothing."""

    def __init__(self, conn_id: int) -> None:
        self.id = conn_id
        self.remote = "127.0.0.1:1"
        self.client_host = "127.0.0.1"
        self.sent = 0

    @property
    def last_received(self) -> float:
        return trio.current_time()  # the transport's is an attribute read: this costs a bit more

    def send_text(self, data: bytes | str) -> None:
        self.sent += 1

    def close(self, code: int = 1000, reason: str = "") -> None:
        pass


class FakeNursery:
    def start_soon(self, *args: Any, **kwargs: Any) -> None:
        pass


def authenticate(hello: Hello) -> str:
    assert hello.user_id is not None
    return hello.user_id


def build() -> tuple[SignalingServer, list[FakeConnection]]:
    config = Config().with_overrides(messages_per_second=1_000_000, message_burst=1_000_000)
    switchboard = Switchboard(
        config=config,
        authenticate=authenticate,
        ice_servers=lambda user_id: [IceServer(urls=["stun:stun.example.org"])],
        ice_refresh_in=lambda: None,
    )
    server = SignalingServer(switchboard, FakeNursery())  # type: ignore[arg-type]
    conns: list[FakeConnection] = []
    for index in range(PAIRS):
        a, b = FakeConnection(2 * index + 1), FakeConnection(2 * index + 2)
        for conn, user in ((a, f"u{index}a"), (b, f"u{index}b")):
            server.on_open(conn)  # type: ignore[arg-type]
            server.on_text(conn, orjson.dumps({"type": "hello", "user_id": user}))  # type: ignore[arg-type]
        call = {"type": "call_initiate", "call_id": f"bench-call-{index}", "to": [f"u{index}b"]}
        server.on_text(a, orjson.dumps(call | {"media": {"audio": True, "video": False}}))  # type: ignore[arg-type]
        server.on_text(b, orjson.dumps({"type": "call_answer", "call_id": f"bench-call-{index}"}))  # type: ignore[arg-type]
        conns += [a, b]
    return server, conns


def messages(size: int, kind: str) -> list[bytes]:
    """One message per client (in `build`'s connection order), `size` bytes, to its peer."""
    out = []
    for index in range(PAIRS):
        for other in ("b", "a"):
            base: dict[str, Any] = {
                "type": kind,
                "call_id": f"bench-call-{index}",
                "to": f"u{index}{other}",
            }
            if kind == "ice_candidate":
                base["candidate"] = {"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}
                room = size - len(orjson.dumps(base))
                base["candidate"]["candidate"] = (CANDIDATE * (room // len(CANDIDATE) + 1))[:room]
            else:
                base["sdp"] = ""
                room = size - len(orjson.dumps(base))
                base["sdp"] = ("v=0\r\na=candidate " * (room // 10 + 1))[:room]
            out.append(orjson.dumps(base))
    return out


def per_call(fn: Callable[[], object], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n * 1e6


def breakdown(
    server: SignalingServer, conns: list[FakeConnection], size: int, kind: str, n: int
) -> None:
    datas = messages(size, kind)
    pairs = list(zip(conns, datas, strict=True))
    count = len(pairs)
    i = 0

    def whole() -> None:
        nonlocal i
        conn, data = pairs[i % count]
        i += 1
        server.on_text(conn, data)  # type: ignore[arg-type]

    sb = server.switchboard
    j = 0

    def receive() -> None:
        nonlocal j
        conn, data = pairs[j % count]
        j += 1
        sb.receive(conn.id, data, trio.current_time(), time.time())

    data = datas[0]
    obj = orjson.loads(data)
    fast = codec.FAST["client"][kind]
    structure = codec.STRUCTURE_BY_TYPE["client"][kind]
    typed = codec.decode_client(data)
    sends = sb.receive(conns[0].id, data, trio.current_time(), time.time())
    send = sends[0]
    assert isinstance(send, Send), sends
    relayed = codec.decode_server(send.frame)
    assert kind == relayed.TYPE, send
    stages = [
        ("on_text (whole shell path, no socket)", whole),
        ("  Switchboard.receive", receive),
        ("    orjson.loads", lambda: orjson.loads(data)),
        ("    fast validator is_valid", lambda: fast.is_valid(obj)),
        ("    structure (per-type)", lambda: structure(obj)),
        ("    decode_client (all three)", lambda: codec.decode_client(data)),
        ("    encode(relayed, seq)", lambda: codec.encode(relayed, seq=1)),
    ]
    print(f"\n{kind}, {len(data)} bytes in, {len(send.frame)} out:")
    for label, fn in stages:
        per_call(fn, n // 10)  # warm
        print(f"  {label:<42} {min(per_call(fn, n // 5) for _ in range(9)):6.2f} us")
    _ = typed


async def run(args: argparse.Namespace) -> None:
    """Inside `trio.run`, as the shell's callbacks are (they read `trio.current_time()`)."""
    server, conns = build()
    for size, kind in ((200, "ice_candidate"), (3000, "sdp_offer")):
        breakdown(server, conns, size, kind, args.n)
    if args.profile == "cprofile":
        datas = messages(200, "ice_candidate")
        pairs = list(zip(conns, datas, strict=True)) * (args.n // (2 * PAIRS))
        profiler = cProfile.Profile()
        profiler.enable()
        for conn, data in pairs:
            server.on_text(conn, data)
        profiler.disable()
        print("\ncProfile of on_text, ice_candidate (tottime, top 25):")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--profile", choices=["cprofile", "none"], default="cprofile")
    trio.run(run, parser.parse_args())


if __name__ == "__main__":
    main()
