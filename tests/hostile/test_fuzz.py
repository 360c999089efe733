"""Bounded fuzzing of the two entry points hostile bytes reach first, in process.

- `callbox.codec.decode_client`, with arbitrary bytes, arbitrary JSON and near-valid messages
  (generated from the schemas, then a few bytes changed): it returns a message or raises
  `ProtocolError`, nothing else, and within the deadline.
- The transport's frame parsing (the `Connection` driving websockets' `ServerProtocol` as
  `callbox serve` does), over a socket on 127.0.0.1: after a real handshake, arbitrary bytes or
  near-valid frames; the connection ends cleanly at EOF, logs no failure, and any close frame it
  sends carries a code RFC 6455 lets a server send.

Each test has a deadline per example and a bounded number of examples (~60 s in all on a
2-core machine).
"""

from __future__ import annotations

import logging
from contextlib import suppress
from datetime import timedelta
from typing import Any

import orjson
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from websockets.frames import EXTERNAL_CLOSE_CODES, Opcode

from callbox.codec import ProtocolError, decode_client
from callbox.conformance.generation import generator_schema, json_safe
from callbox.messages import CLIENT_MESSAGES
from callbox.server.transport.config import TransportConfig
from tests.hostile.harness import FIGURES, frames_until_close, raw_frame
from tests.server.test_transport import EchoHandler, RawClient, running_server, wait_for

pytestmark = pytest.mark.slow

FUZZ = settings(
    deadline=timedelta(milliseconds=500),
    database=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,  # caplog: collects the records of every example
    ],
)


def sendable(code: int) -> bool:
    """A close code that may be on the wire (an echoed client code included), or 1005: what an
    empty close frame, the echo of one, reads as."""
    return code in EXTERNAL_CLOSE_CODES or 3000 <= code <= 4999 or code == 1005


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=30,
)


@st.composite
def near_valid(draw: st.DrawFn) -> bytes:
    """A message valid against its schema, serialized, then up to four bytes overwritten."""
    tag = draw(st.sampled_from(sorted(CLIENT_MESSAGES)))
    wire = bytearray(
        orjson.dumps(draw(from_schema(generator_schema("client", tag)).map(json_safe)))
    )
    for _ in range(draw(st.integers(0, 4))):
        wire[draw(st.integers(0, len(wire) - 1))] = draw(st.integers(0, 255))
    return bytes(wire)


def decodes_or_refuses(data: bytes | str) -> None:
    """A message or `ProtocolError`: any other exception fails the test."""
    with suppress(ProtocolError):
        decode_client(data)


@settings(FUZZ, max_examples=1500)
@given(data=st.binary(max_size=4096) | st.text(max_size=1024))
def test_decode_client_on_arbitrary_input(data: bytes | str) -> None:
    FIGURES.count("fuzz: codec")
    decodes_or_refuses(data)


@settings(FUZZ, max_examples=800)
@given(value=JSON, typed=st.sampled_from([None, *sorted(CLIENT_MESSAGES)]))
def test_decode_client_on_arbitrary_json(value: Any, typed: str | None) -> None:
    if typed is not None:
        value = {"type": typed, "rid": "r", "x": value} if not isinstance(value, dict) else value
        value["type"] = typed
    FIGURES.count("fuzz: codec")
    decodes_or_refuses(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS))


@settings(FUZZ, max_examples=250)
@given(data=near_valid())
def test_decode_client_on_near_valid_messages(data: bytes) -> None:
    FIGURES.count("fuzz: codec")
    decodes_or_refuses(data)


NEAR_VALID_FRAMES = st.lists(
    st.builds(
        raw_frame,
        st.sampled_from([o.value for o in Opcode]) | st.integers(0, 15),
        st.binary(max_size=300),
        fin=st.booleans(),
        rsv=st.sampled_from([0, 0, 0, 1, 4]),
        mask=st.booleans() | st.just(True),
    ),
    max_size=8,
).map(b"".join)


@settings(FUZZ, max_examples=400)
@given(data=st.binary(max_size=2048) | NEAR_VALID_FRAMES)
async def test_transport_on_arbitrary_bytes_after_the_handshake(
    data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    FIGURES.count("fuzz: transport")
    handler = EchoHandler()
    config = TransportConfig(max_message_bytes=1024, close_timeout=0.2)
    async with running_server(handler, config) as port:
        client = await RawClient.connect(port)
        await client.stream.send_all(data)
        await client.stream.send_eof()
        close, _ = await frames_until_close(client)
        await wait_for(lambda: bool(handler.closed))  # ended by the EOF, not by the shutdown
    if close is not None:
        assert sendable(close.code), close
    assert len(handler.closed) == len(handler.opened) == 1
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert failures == [], [r.getMessage() for r in failures]


@settings(FUZZ, max_examples=300)
@given(data=st.binary(max_size=2048))
async def test_transport_on_arbitrary_bytes_as_a_request_head(
    data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    FIGURES.count("fuzz: transport")
    handler = EchoHandler()
    config = TransportConfig(handshake_timeout=0.5, close_timeout=0.2)
    with trio.fail_after(5):
        async with running_server(handler, config) as port:
            async with await trio.open_tcp_stream("127.0.0.1", port) as client:
                await client.send_all(data)
                await client.send_eof()
                while await client.receive_some():
                    pass
            await trio.testing.wait_all_tasks_blocked()  # the server's side ends too
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert failures == [], [r.getMessage() for r in failures]
