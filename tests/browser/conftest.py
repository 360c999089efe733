"""Real browsers, real server: headless Chromium (Debian's `chromium`) driven by Playwright.

The server runs as `python -m callbox serve --port 0` in a subprocess, as a user runs it; it serves
the demo page and `callbox.js`, so the pages run the shipped client, not a copy. Playwright's sync
API drives the browser from these plain (non-trio) tests. It never downloads a browser: it launches
the system's `/usr/lib/chromium/chromium` (the real binary; `/usr/bin/chromium` is a wrapper).

Every wait polls the page's state with a bound; when a test fails, each page's message log, errors,
console and WebRTC statistics, and the server's log, are printed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.helpers import closed_port_url

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Playwright

CHROMIUM = Path("/usr/lib/chromium/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--use-fake-device-for-media-stream",  # a synthetic camera and microphone
    "--use-fake-ui-for-media-stream",  # getUserMedia is granted without a prompt
    "--disable-features=WebRtcHideLocalIpsWithMdns",  # host candidates with IPs, not *.local
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SERVER_START_TIMEOUT_S = 20
WAIT_MS = 20_000
"""The longest any single condition is waited for (ICE typically takes 1.5-2.5 s here)."""

skip_without_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"{CHROMIUM} is missing: apt-get install -y chromium (CI installs it)",
)


class Server:
    """`callbox serve` in a subprocess; its stderr is collected for diagnostics."""

    def __init__(self, **settings: str) -> None:
        """`settings`: environment variables for the server, e.g. RECONNECT_GRACE_MS="1000"."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("CALLBOX_", "JWT_", "TURN_", "STUN_", "WEBHOOK_"))
        }
        env.update(settings)
        command = [sys.executable, "-m", "callbox", "serve", "--port", "0"]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, env=env, text=True)
        self.lines: list[str] = []
        self._listening = threading.Event()
        self.url = ""
        threading.Thread(target=self._read, daemon=True).start()
        if not self._listening.wait(SERVER_START_TIMEOUT_S):
            self.stop()
            pytest.fail(f"the server did not start within {SERVER_START_TIMEOUT_S} s:\n{self.log}")
        self.base = re.sub(r"^ws(s?)://([^/]+)/.*$", r"http\1://\2", self.url)

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if not self._listening.is_set() and (
                match := re.search(r"callbox listening on (wss?://\S+)", line)
            ):
                self.url = match.group(1)
                self._listening.set()
        self._listening.set()  # exited: stop waiting

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class DemoPage:
    """One user in one browser context, on the demo page (`/?user=<id>` signs in at once)."""

    def __init__(self, page: Page, user: str) -> None:
        self.page = page
        self.user = user
        self.console: list[str] = []
        page.on("console", lambda message: self.console.append(f"{message.type}: {message.text}"))
        page.on("pageerror", lambda error: self.console.append(f"pageerror: {error}"))
        page.set_default_timeout(WAIT_MS)

    def js(self, expression: str, arg: Any = None) -> Any:
        """Evaluate a function expression (or plain expression) in the page."""
        return self.page.evaluate(expression, arg)

    def wait_for(self, expression: str, arg: Any = None, timeout_ms: int = WAIT_MS) -> Any:
        """Poll `expression` (a function of `arg`, run every 100 ms) until it is truthy."""
        handle = self.page.wait_for_function(expression, arg=arg, polling=100, timeout=timeout_ms)
        return handle.json_value()

    def stats(self) -> dict[str, dict[str, Any]]:
        """WebRTC statistics of the current call, by remote user."""
        stats = self.js("async () => demo.call ? await demo.call.stats() : []")
        return {peer["userId"]: peer for peer in stats}

    def diagnostics(self) -> str:
        parts = [f"===== {self.user}"]
        try:
            state = self.js(
                """() => ({
                    connection: demo.client?.state, session: demo.client?.sessionId,
                    lastSeq: demo.client?.lastSeq, call: demo.call?.id, callState: demo.call?.state,
                    participants: demo.call?.participants, errors: demo.errors,
                    calls: [...(demo.client?.calls.keys() ?? [])],
                })"""
            )
            parts.append(f"state: {json.dumps(state)}")
            parts.append(f"stats: {json.dumps(self.stats())}")
            log = self.js("() => demo.log.slice(-60)")
            parts.append("log (last 60, truncated):")
            parts.extend(line[:300] for line in log)
        except Exception as exc:  # the page may be gone or broken: say so and go on
            parts.append(f"(could not read the page: {exc!r})")
        parts.append("console:")
        parts.extend(self.console[-40:])
        return "\n".join(parts)


class Browsers:
    """Opens demo pages, each in its own browser context (its own user, its own socket)."""

    def __init__(self, browser: Browser, server: Server) -> None:
        self.browser = browser
        self.server = server
        self.pages: list[DemoPage] = []
        self.tag = uuid.uuid4().hex[:6]
        """Appended to user ids, so tests sharing the server never meet each other's users."""

    def open(self, name: str, query: str = "") -> DemoPage:
        """`name`'s page, signed in (`?user=`, then `query`)."""
        demo = self.open_signed_out(name, f"?user={name}-{self.tag}{query}")
        demo.wait_for("() => window.demo?.client?.state === 'open'")
        return demo

    def open_signed_out(self, name: str, query: str = "") -> DemoPage:
        """A page for `name` at `/` + `query`, not waiting for any sign-in."""
        context = self.browser.new_context()
        demo = DemoPage(context.new_page(), f"{name}-{self.tag}")
        self.pages.append(demo)
        demo.page.goto(f"{self.server.base}/{query}")
        return demo

    def diagnostics(self) -> str:
        pages = "\n".join(page.diagnostics() for page in self.pages)
        return f"{pages}\n===== server log (last 80 lines)\n{''.join(self.server.lines[-80:])}"

    def close(self) -> None:
        for demo in self.pages:
            try:
                demo.page.context.close()
            except Exception as exc:
                print(f"closing {demo.user}'s context: {exc!r}")


def _run_server(**settings: str) -> Iterator[Server]:
    server = Server(**settings)
    yield server
    server.stop()
    assert "Traceback" not in server.log, server.log


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """The server with its default settings."""
    yield from _run_server()


SHORT_GRACE_MS = 1000


@pytest.fixture(scope="module")
def short_grace_server() -> Iterator[Server]:
    """A server that forgets a lost session after SHORT_GRACE_MS."""
    yield from _run_server(RECONNECT_GRACE_MS=str(SHORT_GRACE_MS))


LONG_GRACE_MS = 120_000
"""Far longer than any wait of a test: a peer told that someone left within a wait was told by
`bye`, not by the grace period running out."""


@pytest.fixture(scope="module")
def long_grace_server() -> Iterator[Server]:
    """A server that keeps a lost session for LONG_GRACE_MS."""
    yield from _run_server(RECONNECT_GRACE_MS=str(LONG_GRACE_MS))


JWT_SECRET = "demo-page-test-secret-of-32-bytes!"


@pytest.fixture(scope="module")
def jwt_server() -> Iterator[Server]:
    """A server that signs users in with JWTs signed with JWT_SECRET only."""
    yield from _run_server(JWT_SECRET=JWT_SECRET)


@pytest.fixture(scope="module")
def offline_ringing_server() -> Iterator[Server]:
    """A server with a webhook (whose receiver is down: the ring goes on regardless), so
    that it rings users whose app is closed."""
    receiver = closed_port_url().replace("ws://", "http://")
    secret = "whsec_" + "b" * 32
    yield from _run_server(WEBHOOK_URL=receiver, WEBHOOK_SECRET=secret, RING_TIMEOUT_MS="60000")


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    # Imported here, so that without Chromium the tests are skipped rather than failing to import.
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
    )
    yield browser
    browser.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


FAILED = pytest.StashKey[bool]()


@pytest.fixture
def browsers(
    request: pytest.FixtureRequest, browser: Browser, server: Server
) -> Iterator[Browsers]:
    """Demo pages on the default server; diagnostics are printed if the test fails."""
    yield from _browsers(request, browser, server)


@pytest.fixture
def short_grace_browsers(
    request: pytest.FixtureRequest, browser: Browser, short_grace_server: Server
) -> Iterator[Browsers]:
    """Demo pages on the short-grace server."""
    yield from _browsers(request, browser, short_grace_server)


@pytest.fixture
def offline_ringing_browsers(
    request: pytest.FixtureRequest, browser: Browser, offline_ringing_server: Server
) -> Iterator[Browsers]:
    """Demo pages on the server that rings users whose app is closed."""
    yield from _browsers(request, browser, offline_ringing_server)


@pytest.fixture
def long_grace_browsers(
    request: pytest.FixtureRequest, browser: Browser, long_grace_server: Server
) -> Iterator[Browsers]:
    """Demo pages on the long-grace server."""
    yield from _browsers(request, browser, long_grace_server)


@pytest.fixture
def jwt_browsers(
    request: pytest.FixtureRequest, browser: Browser, jwt_server: Server
) -> Iterator[Browsers]:
    """Demo pages on the JWT server."""
    yield from _browsers(request, browser, jwt_server)


def _browsers(
    request: pytest.FixtureRequest, browser: Browser, server: Server
) -> Iterator[Browsers]:
    browsers = Browsers(browser, server)
    started = time.monotonic()
    yield browsers
    if request.node.stash.get(FAILED, True):
        elapsed = time.monotonic() - started
        print(f"\n----- diagnostics after {elapsed:.1f} s\n{browsers.diagnostics()}")
    browsers.close()


def poll(
    condition: Callable[[], Any], timeout_s: float, describe: Callable[[], str], step_s: float = 0.2
) -> Any:
    """Call `condition` until it returns something truthy; fail with `describe()` after timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s: {describe()}")
        time.sleep(step_s)
