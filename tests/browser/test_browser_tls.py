"""A call between real browsers over `wss://`, the page itself served over `https://`.

The server is `callbox serve` with a certificate from a trustme CA. Chromium is told to accept
that certificate, and only it: `--ignore-certificate-errors-spki-list` with the SHA-256 of the
certificate's public key (the flag works only with a `--user-data-dir`, which Playwright always
passes). Without it the page would not load at all, so a page that loads is a page over TLS.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.helpers import write_certificate

from .conftest import (
    CHROMIUM,
    CHROMIUM_ARGS,
    Browsers,
    DemoPage,
    Server,
    _browsers,
    _run_server,
    poll,
    skip_without_chromium,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Playwright

pytestmark = [pytest.mark.e2e, skip_without_chromium]


def spki_sha256(cert_file: str) -> str:
    """The certificate's public key pin (RFC 7469 §2.4), as Chromium's flag takes it."""
    cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return write_certificate(trustme.CA(), tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(certificate: tuple[str, str]) -> Iterator[Server]:
    cert, key = certificate
    yield from _run_server(TLS_CERT_FILE=cert, TLS_KEY_FILE=key)


@pytest.fixture(scope="module")
def tls_browser(playwright: Playwright, certificate: tuple[str, str]) -> Iterator[Browser]:
    pin = f"--ignore-certificate-errors-spki-list={spki_sha256(certificate[0])}"
    browser = playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=[*CHROMIUM_ARGS, pin]
    )
    yield browser
    browser.close()


@pytest.fixture
def tls_browsers(
    request: pytest.FixtureRequest, tls_browser: Browser, tls_server: Server
) -> Iterator[Browsers]:
    yield from _browsers(request, tls_browser, tls_server)


def video_from(page: DemoPage, other: DemoPage) -> int:
    """Video bytes `page` has received from `other` (0 before any)."""
    peer = page.stats().get(other.user)
    return int(peer["video"]["bytesReceived"]) if peer else 0


def test_a_call_over_wss_from_a_page_served_over_https(tls_browsers: Browsers) -> None:
    server = tls_browsers.server
    assert server.url.startswith("wss://") and server.base.startswith("https://")
    alice, bob = tls_browsers.open("alice"), tls_browsers.open("bob")
    for page in (alice, bob):
        where = page.js("() => [location.protocol, demo.client.url, window.isSecureContext]")
        assert where == ["https:", server.url, True], where
    alice.page.fill("#call-users", bob.user)
    alice.page.click("#call")
    bob.page.click("#incoming .answer")
    for page, other in ((alice, bob), (bob, alice)):
        page.wait_for(
            "(other) => demo.call?.state === 'active' && demo.call.peers.get(other)?.connected",
            other.user,
        )
        poll(lambda p=page, o=other: video_from(p, o) > 0, 20, lambda p=page: str(p.stats()))
    alice.page.click("#hangup")
    bob.wait_for("() => demo.call === null")
    assert bob.page.inner_text("#call-result") == f"call ended: hangup by {alice.user} (normal)"
    for page in (alice, bob):
        assert page.js("() => demo.errors") == [], page.user


def test_without_the_pin_chromium_refuses_the_certificate(
    browser: Browser, tls_server: Server
) -> None:
    """The control: the test CA is trusted nowhere, so the pin is what lets the page load."""
    from playwright.sync_api import Error  # noqa: PLC0415  # Playwright only where Chromium is

    page = browser.new_page()
    try:
        with pytest.raises(Error, match="ERR_CERT_AUTHORITY_INVALID"):
            page.goto(f"{tls_server.base}/")
    finally:
        page.close()
