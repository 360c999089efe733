"""The transport's limits and timings, one set per server."""

from __future__ import annotations

import attrs
from websockets.typing import Origin

from callbox.server.transport.outbound import CLOSE_FRAME_RESERVE_BYTES

__all__ = ["TransportConfig"]


@attrs.frozen
class TransportConfig:
    """Per-server limits; sizes in bytes, durations in seconds.

    What a client can make the server hold is bounded: a message by `max_message_bytes` (its
    fragments are joined as they arrive, and there may be `max_message_fragments` of them: an
    empty continuation frame costs no payload byte, so a count must bound those), a request head
    by `max_request_head_bytes` (h11's default; websockets alone allows 128 lines of 8 KiB), and
    the heads being read at once by `max_handshakes`, server-wide.

    A connection beyond `max_handshakes` waits for a slot, its request unread in the kernel's
    buffer, rather than being refused with 503: a burst of legitimate handshakes (every client
    reconnecting after a restart) is then served in turn instead of failing and coming back as
    retries. The wait counts towards `handshake_timeout`, so it is bounded too; a connection
    still waiting at the deadline gets 503, one whose head is still incomplete 408.
    """

    path: str = "/ws"
    max_message_bytes: int = 256 * 1024
    max_message_fragments: int = attrs.field(default=1024, validator=attrs.validators.gt(0))
    max_request_head_bytes: int = attrs.field(default=16 * 1024, validator=attrs.validators.gt(0))
    max_handshakes: int = attrs.field(default=256, validator=attrs.validators.gt(0))
    send_buffer_bytes: int = attrs.field(
        default=1024 * 1024, validator=attrs.validators.gt(CLOSE_FRAME_RESERVE_BYTES)
    )
    heartbeat_interval: float = 15.0
    heartbeat_timeout: float = 30.0
    handshake_timeout: float = 10.0
    close_timeout: float = 5.0
    read_size: int = 64 * 1024
    feed_size: int = attrs.field(default=4 * 1024, validator=attrs.validators.gt(0))
    """A read larger than this is parsed this many bytes at a time, so that turns can be taken
    between (`frames_per_turn`). The parser takes ~6 us a frame, ~1 ms per KiB of empty ones:
    a 64 KiB read of them, handled whole, stalled every other connection ~65 ms."""
    frames_per_turn: int = attrs.field(default=256, validator=attrs.validators.gt(0))
    """Frames of one read handled before other connections get a turn (eight connections
    sending empty frames stalled a sentinel call's relay 235 ms; taking turns, ~20 ms)."""
    trusted_proxies: frozenset[str] = frozenset({"127.0.0.1", "::1"})
    """Peers whose `X-Forwarded-For` names the client (see `Connection.client_host`)."""
    origins: tuple[Origin | None, ...] | None = None
    """The `Origin` values an upgrade may carry (None in it: an upgrade without one, from a
    client that is not a browser); others get 403. None: any, unchecked. Browsers send `Origin`
    with every WebSocket upgrade, and a page cannot change it: this is what stops another
    site's page from using a visitor's credentials here (cross-site WebSocket hijacking)."""
