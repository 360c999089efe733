"""Takes the demo page through its states in headless Chromium and writes a screenshot of each.

Why: the demo page is what a new user sees first, and what a badge colour, a countdown or a long
error looks like is only known by looking. The browser tests assert what can be asserted; this
shows the rest, the same way every time, to look at before changing the page is called done.

Usage (from the repository root, with Debian's ``chromium`` and the test extras installed)::

    python tools/demo_screenshots.py /tmp/shots

It runs ``callbox serve`` on a free port of 127.0.0.1 (stopped by its process id at the end), opens
alice, bob and carol, and writes ``01-idle.png`` … ``09-reconnecting.png``: signed out; bob rung
with the countdown; alice ringing both; a group call with its roster; bob after alice left;
carol after the call ended; a long error; a tab signed in through ``?servers=`` whose first URL
answers nothing; and that tab reconnecting. The server's log goes to ``server.log`` beside them.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = "/usr/lib/chromium/chromium"
ARGS = [
    "--no-sandbox",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]
VIEWPORT = {"width": 1200, "height": 820}
SETTLE_S = 2.0
"""Given to the page before a screenshot, so that videos show frames and countdowns have ticked."""


def start_server(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`callbox serve` on a free port, its stderr in `log`; its process and WebSocket URL."""
    command = [sys.executable, "-m", "callbox", "serve", "--host", "127.0.0.1", "--port", "0"]
    with log.open("wb") as stderr:
        server = subprocess.Popen(command, stderr=stderr)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and server.poll() is None:
        if match := re.search(r"callbox listening on (ws://\S+)", log.read_text()):
            return server, match.group(1)
        time.sleep(0.1)
    stop(server)
    raise SystemExit(f"the server did not start:\n{log.read_text()}")


def stop(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM to its process id, SIGKILL if it is still there 10 s later."""
    if server.poll() is None:
        os.kill(server.pid, signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(server.pid, signal.SIGKILL)
            server.wait()


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"ws://127.0.0.1:{probe.getsockname()[1]}/ws"


def open_page(browser: Browser, base: str, query: str = "") -> Page:
    page = browser.new_context(viewport=VIEWPORT).new_page()
    page.goto(f"{base}/{query}")
    if "user=" in query:
        page.wait_for_function("() => window.demo?.client?.state === 'open'")
    return page


def shoot(page: Page, out: Path, name: str) -> None:
    time.sleep(SETTLE_S)
    page.screenshot(path=out / f"{name}.png", full_page=True)
    print(out / f"{name}.png")


def tour(browser: Browser, base: str, url: str, out: Path) -> None:
    shoot(open_page(browser, base), out, "01-idle")
    users = ["alice", "bob", "carol"]
    alice, bob, carol = (open_page(browser, base, f"?user={user}") for user in users)
    alice.fill("#call-users", "bob, carol")
    alice.click("#call")
    bob.wait_for_selector("#incoming .answer")
    shoot(bob, out, "02-ringing-callee")
    shoot(alice, out, "03-ringing-caller")
    bob.click("#incoming .answer")
    carol.click("#incoming .answer")
    alice.wait_for_function(
        "() => demo.call?.participants.length === 3"
        " && [...demo.call.peers.values()].every((peer) => peer.connected)"
    )
    shoot(alice, out, "04-in-call")
    alice.click("#hangup")
    bob.wait_for_function("() => demo.call?.participants.length === 2")
    shoot(bob, out, "05-participant-left")
    bob.click("#hangup")
    carol.wait_for_function("() => demo.call === null")
    shoot(carol, out, "06-ended")
    carol.evaluate("() => demo.client.send({type: 'room_join', room: 'r'.repeat(300)})")
    carol.wait_for_function("() => demo.errors.length > 0")
    shoot(carol, out, "07-long-error")
    dave = open_page(browser, base, f"?user=dave&servers={closed_port_url()},{url}")
    shoot(dave, out, "08-servers")
    dave.evaluate("() => demo.client.dropConnection(60000)")
    dave.wait_for_function("() => demo.client.state === 'reconnecting'")
    shoot(dave, out, "09-reconnecting")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="directory to write the PNG files to")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    server, url = start_server(out / "server.log")
    base = re.sub(r"^ws://([^/]+)/.*$", r"http://\1", url)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            try:
                tour(browser, base, url, out)
            finally:
                browser.close()
    finally:
        stop(server)


if __name__ == "__main__":
    main()
