"""Frame layer: WebSocket frames no conforming client sends.

Each generated frame follows a signed-in client's valid traffic; `expected_close` is RFC 6455's
verdict on it (1002 protocol error, 1007 bad UTF-8, 1009 too big), or None where the frame is
legal and the connection must go on. The server's close frame must carry exactly that code.
"""

from __future__ import annotations

import itertools

import attrs
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import EXTERNAL_CLOSE_CODES, Frame, Opcode

from tests.hostile.harness import (
    FIGURES,
    HANG_GUARD_S,
    MAX_MESSAGE_BYTES,
    NETWORK,
    ServerProcess,
    as_text,
    frames_until_close,
    raw_frame,
    receive_until,
    send_raw,
    texts,
    ws_client,
)
from tests.server.test_transport import RawClient

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("guard")]

LAYER = "frame"
MAX_MESSAGE_FRAGMENTS = 1024
"""docs/decisions/0005-hardening.md: more fragments than this close the connection with 1009."""
CONTROL = {Opcode.CLOSE.value, Opcode.PING.value, Opcode.PONG.value}
DATA = {Opcode.CONT.value, Opcode.TEXT.value, Opcode.BINARY.value}
_users = itertools.count()


@attrs.frozen
class RawFrame:
    opcode: int
    payload: bytes
    fin: bool
    rsv: int
    mask: bool
    length: int | None  # declared length, when it lies (only ever larger: nothing follows)

    def encode(self) -> bytes:
        return raw_frame(
            self.opcode,
            self.payload,
            fin=self.fin,
            rsv=self.rsv,
            mask=self.mask,
            length=self.length,
        )


def valid_close_code(code: int) -> bool:
    return code in EXTERNAL_CLOSE_CODES or 3000 <= code <= 4999


def expected_close(frame: RawFrame) -> int | None:
    """The close code RFC 6455 (and websockets, which callbox drives) owes this frame sent
    outside any fragmented message; None when it is legal. Where a frame breaks several rules,
    the first checked decides: the opcode and the mask, then the length (before the payload is
    read), then the reserved bits and the control-frame rules."""
    size = len(frame.payload) if frame.length is None else frame.length
    if not frame.mask or frame.opcode not in CONTROL | DATA:
        return 1002
    if size > MAX_MESSAGE_BYTES:
        return 1009
    if frame.rsv or (frame.opcode in CONTROL and (not frame.fin or size > 125)):
        return 1002
    if frame.opcode == Opcode.CONT.value:
        return 1002  # no message to continue
    if frame.opcode == Opcode.CLOSE.value:
        return _close_verdict(frame.payload)
    if frame.opcode == Opcode.TEXT.value and frame.fin and not _utf8(frame.payload):
        return 1007
    return None


def _close_verdict(payload: bytes) -> int | None:
    """A client's close frame: answered with its own code when valid (None: not an error)."""
    if len(payload) == 1:
        return 1002
    if len(payload) >= 2:
        if not _utf8(payload[2:]):  # the reason is decoded before the code is checked
            return 1007
        if not valid_close_code(int.from_bytes(payload[:2], "big")):
            return 1002
    return None


def _utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


FRAMES = st.builds(
    RawFrame,
    opcode=st.one_of(st.sampled_from(sorted(CONTROL | DATA)), st.integers(0, 15)),
    payload=st.one_of(
        st.binary(max_size=200),
        st.text(max_size=100).map(str.encode),
        st.builds(
            lambda code, reason: code.to_bytes(2, "big") + reason,
            st.integers(0, 65535),
            st.binary(max_size=20),
        ),
    ),
    fin=st.booleans(),
    rsv=st.one_of(st.just(0), st.integers(0, 7)),
    mask=st.booleans() | st.just(True),
    length=st.none() | st.integers(MAX_MESSAGE_BYTES + 1, 2**63 - 1),
).filter(lambda f: f.length is None or f.length > len(f.payload))


@settings(NETWORK, max_examples=200)
@given(frame=FRAMES)
async def test_each_frame_gets_the_rfc_6455_close_code_or_none(
    server: ServerProcess, frame: RawFrame
) -> None:
    FIGURES.count(LAYER)
    client = await ws_client(server)
    hello = as_text({"type": "hello", "user_id": f"f{next(_users)}"}).encode()
    hello = raw_frame(Opcode.TEXT.value, hello)
    await send_raw(client, hello + frame.encode())
    expected = expected_close(frame)
    if expected is None and frame.opcode != Opcode.CLOSE.value:
        # Legal, so the connection goes on: prove it with a ping, then close cleanly.
        ping = as_text({"type": "ping", "ts": 1, "rid": "after"}).encode()
        await send_raw(client, raw_frame(Opcode.TEXT.value, ping))
        if not frame.fin and frame.opcode in (Opcode.TEXT.value, Opcode.BINARY.value):
            # A message left unfinished: the ping is a data frame where a continuation belongs.
            close, _ = await frames_until_close(client)
            assert close is not None
            assert close.code == 1002
            return
        assert await pong_arrives(client, "after")
        await send_raw(client, raw_frame(Opcode.CLOSE.value, b"\x03\xe8"))
        close, _ = await frames_until_close(client)
        assert close is not None
        assert close.code == 1000
        return
    close, _ = await frames_until_close(client)
    assert close is not None, "the server dropped the connection without a close frame"
    if expected is None:  # a valid close frame: echoed (no code at all reads as 1005)
        assert close.code == (int.from_bytes(frame.payload[:2], "big") if frame.payload else 1005)
    else:
        assert close.code == expected


async def pong_arrives(client: RawClient, rid: str) -> bool:
    """Whether the answer to a ping with `rid` arrives (before the connection ends). Only then
    may the test close: the server drops whatever it would send after answering a close."""
    frames = await receive_until(client, lambda frames: _has_rid(frames, rid))
    return _has_rid(frames, rid)


def _has_rid(frames: list[Frame], rid: str) -> bool:
    return any(message.get("rid") == rid for message in texts(frames))


@pytest.mark.parametrize(
    ("fragment", "count"),
    [(b"", 50_000), (b"x", 20_000)],
    ids=["empty", "one-byte"],
)
async def test_endless_fragments_close_1009_with_memory_bounded(
    server: ServerProcess, fragment: bytes, count: int
) -> None:
    """Issue 10 finding (c): a message in tiny or empty continuation frames, never finished, was
    kept as a list of fragments without bound. Eight connections at once, so that unbounded
    growth shows in the RSS the guard samples."""

    async def attack() -> None:
        client = await ws_client(server)
        first = raw_frame(Opcode.TEXT.value, b"[", fin=False)
        burst = raw_frame(Opcode.CONT.value, fragment, fin=False) * 1000
        await send_raw(client, first)
        for _ in range(count // 1000):
            await send_raw(client, burst)
        with trio.fail_after(HANG_GUARD_S):
            close, _ = await frames_until_close(client)
        assert close is not None
        assert (close.code, close.reason) == (1009, "too many fragments")

    FIGURES.count(LAYER, 8)
    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(attack)


async def test_pings_between_fragments_are_answered_and_the_message_arrives(
    server: ServerProcess,
) -> None:
    """Control frames may come between a message's fragments (RFC 6455 5.4); many of them."""
    client = await ws_client(server)
    message = as_text({"type": "hello", "user_id": "fragmented"}).encode()
    wire = raw_frame(Opcode.TEXT.value, message[:1], fin=False)
    for index, byte in enumerate(message[1:], start=1):
        wire += raw_frame(Opcode.PING.value, b"%d" % index)
        wire += raw_frame(Opcode.CONT.value, bytes([byte]), fin=index == len(message) - 1)
    await send_raw(client, wire)
    FIGURES.count(LAYER, len(message) * 2)
    frames = await receive_until(client, lambda frames: bool(texts(frames)))
    # Closed only now: the server drops what it would send after answering a close.
    await send_raw(client, raw_frame(Opcode.CLOSE.value, b"\x03\xe8"))
    close, more = await frames_until_close(client)
    frames += more
    pongs = [bytes(f.data) for f in frames if f.opcode is Opcode.PONG]
    assert pongs == [b"%d" % i for i in range(1, len(message))]
    assert [m["type"] for m in texts(frames)] == ["welcome"]
    assert close is not None
    assert close.code == 1000


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        pytest.param(
            [(Opcode.TEXT, b"\xce", False), (Opcode.CONT, b"\xff", True)], 1007, id="utf8"
        ),
        pytest.param([(Opcode.TEXT, b"{", False), (Opcode.TEXT, b"}", True)], 1002, id="restart"),
        pytest.param([(Opcode.PING, b"", False)], 1002, id="fragmented-ping"),
        pytest.param([(Opcode.PING, b"x" * 126, True)], 1002, id="long-ping"),
        pytest.param([(Opcode.CLOSE, b"\x03\xed", True)], 1002, id="close-1005"),
        pytest.param([(Opcode.CLOSE, b"\x03\xe8\xff", True)], 1007, id="close-bad-reason"),
    ],
)
async def test_fragment_and_control_frame_misuse(
    server: ServerProcess, frames: list[tuple[Opcode, bytes, bool]], code: int
) -> None:
    client = await ws_client(server)
    wire = b"".join(raw_frame(op.value, data, fin=fin) for op, data, fin in frames)
    await send_raw(client, wire)
    FIGURES.count(LAYER)
    close, _ = await frames_until_close(client)
    assert close is not None
    assert close.code == code
