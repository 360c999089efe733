"""`callbox serve` as a user runs it: a real process, stopped by SIGTERM or Ctrl-C."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import pytest
import trio
from trio_websocket import ConnectionClosed

from .wsclient import connect


async def read_until(stream: trio.abc.ReceiveStream, pattern: re.Pattern[str]) -> tuple[str, str]:
    """Read `stream` until `pattern` matches; returns the match's first group and all text read."""
    text = ""
    while (match := pattern.search(text)) is None:
        chunk = await stream.receive_some()
        assert chunk, f"the server exited before matching {pattern.pattern!r}:\n{text}"
        text += chunk.decode()
    return match.group(1), text


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
async def test_serve_stops_cleanly_and_says_goodbye(stop_signal: signal.Signals) -> None:
    command = [sys.executable, "-m", "callbox", "serve", "--port", "0"]
    process = await trio.lowlevel.open_process(command, stderr=subprocess.PIPE)
    assert process.stderr is not None
    try:
        with trio.fail_after(20):
            listening = re.compile(r"callbox listening on (ws://\S+)")
            url, log = await read_until(process.stderr, listening)
            async with connect(url, "alice") as alice:
                process.send_signal(stop_signal)
                with pytest.raises(ConnectionClosed):
                    await alice.ws.get_message()
                assert alice.ws.closed is not None
                assert alice.ws.closed.code == 1001
            while chunk := await process.stderr.receive_some():
                log += chunk.decode()
            assert await process.wait() == 0
    finally:
        process.kill()
    assert "Traceback" not in log, log
