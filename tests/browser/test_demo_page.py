"""The demo page itself, in headless Chromium: what it tells the other side when a tab goes, what
it shows while ringing and after a call, how it signs in again after a reload, and that long
errors stay inside their card.

Calls here need no media to flow (signaling is the point), so they are set up through the page's
client with an empty stream where the page's buttons are not what is tested.
"""

from __future__ import annotations

import re
import time

import jwt
import pytest

from tests.helpers import closed_port_url

from .conftest import JWT_SECRET, Browsers, DemoPage, skip_without_chromium

pytestmark = [pytest.mark.e2e, skip_without_chromium]

IN_A_CALL = "() => demo.call?.state === 'active'"


def signaling_call(caller: DemoPage, callee: DemoPage) -> None:
    """caller calls callee (no media), callee answers by the page's button: both are active."""
    caller.js("(to) => demo.client.call([to], {stream: new MediaStream()})", callee.user)
    callee.page.click("#incoming .answer")
    for page in (caller, callee):
        page.wait_for(IN_A_CALL)


@pytest.mark.parametrize("leaving", ["close", "reload", "navigate"])
def test_a_tab_that_goes_says_bye_and_the_peer_learns_at_once(
    long_grace_browsers: Browsers, leaving: str
) -> None:
    """Without `bye` the server would keep alice's session for its grace period (two minutes
    here, longer than any wait of this test) and bob's call would go on."""
    alice, bob = long_grace_browsers.open("alice"), long_grace_browsers.open("bob")
    signaling_call(alice, bob)
    if leaving == "close":
        alice.page.close()
    elif leaving == "reload":
        alice.page.reload()
    else:
        alice.page.goto("about:blank")
    bob.wait_for("() => demo.call === null")
    assert bob.page.inner_text("#call-result") == f"call ended: disconnected by {alice.user}"
    if leaving == "reload":  # signed in again, in a new session
        alice.wait_for("() => demo.client?.state === 'open'")


def test_a_callee_whose_app_is_closed_shows_as_notified_while_it_rings(
    offline_ringing_browsers: Browsers,
) -> None:
    alice = offline_ringing_browsers.open("alice")
    absent = f"{alice.user}-phone-off"  # nobody signs in as this user
    alice.page.fill("#call-users", absent)
    alice.page.click("#call")
    ring = rf"ringing: {re.escape(absent)} \(offline, notified: (\d+) s\)"
    alice.wait_for(
        "(ring) => new RegExp(ring).test(document.querySelector('#call-ringing').textContent)",
        ring,
    )


def test_the_ring_counts_down_and_the_roster_goes_when_the_call_ends(
    browsers: Browsers,
) -> None:
    alice, bob, carol = browsers.open("alice"), browsers.open("bob"), browsers.open("carol")
    alice.page.fill("#call-users", f"{bob.user}, {carol.user}")
    alice.page.click("#call")
    ring = rf"ringing: {bob.user} \((\d+) s\), {carol.user} \((\d+) s\)"
    alice.wait_for(
        "(ring) => new RegExp(ring).test(document.querySelector('#call-ringing').textContent)",
        ring,
    )
    for page in (bob, carol):
        page.wait_for("() => document.querySelector('#incoming .ring')")
    incoming = bob.page.inner_text("#incoming .ring")
    found = re.search(r"(\d+) s left", incoming)
    assert found, incoming
    left = int(found.group(1))
    ring_timeout_s = bob.js("() => demo.client.limits.ring_timeout_ms / 1000")
    assert 0 < left <= ring_timeout_s, incoming
    # The countdown goes down (a second or so later).
    bob.wait_for(
        "(left) => Number(document.querySelector('#incoming .countdown').textContent"
        ".split(' ')[0]) < left",
        left,
    )

    bob.page.click("#incoming .answer")
    carol.page.click("#incoming .decline")
    alice.wait_for("() => demo.call.participants.length === 2 && demo.call.ringing.length === 0")
    for page in (alice, bob):
        page.wait_for(
            """() => document.querySelector('#call-participants').textContent
                === 'in the call: ' + demo.call.participants.join(', ')"""
        )
    assert alice.page.inner_text("#call-ringing") == ""

    alice.page.click("#hangup")
    for page in (alice, bob):
        page.wait_for("() => demo.call === null")
        shown = page.js(
            """() => ({state: document.querySelector('#call-state').textContent,
                participants: document.querySelector('#call-participants').textContent,
                ringing: document.querySelector('#call-ringing').textContent,
                tiles: document.querySelectorAll('#videos .tile').length})"""
        )
        assert shown == {"state": "ended", "participants": "", "ringing": "", "tiles": 0}, shown


def test_a_jwt_sign_in_survives_a_reload(jwt_browsers: Browsers) -> None:
    user = f"alice-{jwt_browsers.tag}"
    claims = {"sub": user, "exp": int(time.time()) + 600}
    token = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    alice = jwt_browsers.open_signed_out("alice")
    alice.page.fill("#token", token)
    alice.page.click("#connect")
    alice.wait_for("() => demo.client?.state === 'open'")
    assert "user=" not in alice.page.url  # a ?user= would be refused after the reload
    first = alice.js("() => demo.client.sessionId")

    alice.page.reload()
    alice.wait_for("() => demo.client?.state === 'open'")
    assert alice.js("() => [demo.client.me, demo.errors]") == [user, []]
    assert alice.js("() => demo.client.sessionId") != first

    # Signing out forgets the token: the next reload does not sign in.
    alice.page.click("#disconnect")
    alice.wait_for("() => demo.client.state === 'closed'")
    alice.page.reload()
    alice.page.wait_for_load_state("load")
    assert alice.js("() => [demo.client, document.querySelector('#token').value]") == [None, ""]


def test_a_refused_saved_token_is_shown_and_forgotten(jwt_browsers: Browsers) -> None:
    """A token that expired since the sign-in: the reload shows the refusal, once."""
    alice = jwt_browsers.open_signed_out("alice")
    alice.js("() => sessionStorage.setItem('callbox-demo-token', 'not-a-valid-jwt')")
    alice.page.reload()
    alice.wait_for("() => demo.errors.length > 0")
    assert alice.js("() => demo.errors[0].code") == "auth_failed"
    assert alice.js("() => sessionStorage.getItem('callbox-demo-token')") is None


def test_long_errors_wrap_inside_their_card(browsers: Browsers) -> None:
    alice = browsers.open("alice")
    alice.js("() => demo.client.send({type: 'room_join', room: 'r'.repeat(300)})")
    alice.wait_for("() => demo.errors.length > 0")
    overflow = alice.js(
        """() => [...document.querySelectorAll('#errors li, #errors-panel')].map(
            (node) => node.scrollWidth - node.clientWidth)"""
    )
    assert overflow and all(extra <= 0 for extra in overflow), overflow


def test_the_page_follows_the_servers_it_is_given(browsers: Browsers) -> None:
    """`?servers=` with a URL nobody answers first: the page signs in through the second."""
    servers = f"{closed_port_url()},{browsers.server.url}"
    alice = browsers.open("alice", f"&servers={servers}")
    assert alice.js("() => demo.client.url") == browsers.server.url
    assert f"via {browsers.server.url}" in alice.page.inner_text("#me")
    assert "servers=" in alice.page.url  # kept when the page rewrote the URL
