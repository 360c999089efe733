"""A node's `Gateway`: frames written in `seq` order, whether they come from the node's own
commits, with another node's wake-up, or read from the outbox; and the bus's lines."""

from __future__ import annotations

from callbox.cluster.node import Fetch, Gateway, Wake
from callbox.core.actions import Close, ReplayAfter, Send
from callbox.server.cluster import bus_message, close_message, wake_message

CONN = (1 << 32) + 7
FRAME = b'{"type":"ice_candidate","candidate":{"candidate":"a b c"},"seq":4}'


def carrying(last_seq: int) -> Gateway:
    gateway = Gateway(1)
    gateway.route([ReplayAfter(CONN, "s1", last_seq)])
    return gateway


def test_a_woken_frame_next_in_line_is_written_without_reading_the_outbox() -> None:
    gateway = carrying(3)
    assert gateway.woken(Wake(1, CONN, "s1", 4, FRAME)) == [Send(CONN, FRAME)]
    assert gateway.woken(Wake(1, CONN, "s1", 4, FRAME)) == []  # written already


def test_after_a_gap_or_without_its_frame_a_wake_up_reads_the_outbox() -> None:
    gateway = carrying(3)
    assert gateway.woken(Wake(1, CONN, "s1", 6, FRAME)) == [Fetch(CONN, "s1", 3)]
    assert gateway.woken(Wake(1, CONN, "s1", 4)) == [Fetch(CONN, "s1", 3)]


def test_a_wake_up_for_a_connection_not_carried_or_another_session_is_ignored() -> None:
    assert Gateway(1).woken(Wake(1, CONN, "s1", 1, FRAME)) == []
    assert carrying(0).woken(Wake(1, CONN, "s2", 1, FRAME)) == []


def test_the_bus_lines_say_what_was_sent() -> None:
    wake = Wake(1, CONN, "s1", 4, FRAME)
    assert bus_message(wake_message(wake), 1) == wake
    close = Close(CONN, 4002, "session taken over")
    assert bus_message(close_message(close), 1) == close


def test_a_frame_with_a_raw_newline_goes_without_and_is_read_instead() -> None:
    raw = b'{"type":"x",\n"seq":4}'
    heard = bus_message(wake_message(Wake(1, CONN, "s1", 4, raw)), 1)
    assert heard == Wake(1, CONN, "s1", 4, b"")
