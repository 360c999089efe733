"""Calls between real browsers running the demo page and callbox.js, as served by the server.

Each user is a page of headless Chromium with a fake camera and microphone. The tests click through
the demo page (call, answer, hang up) and read its state (`window.demo`) and WebRTC statistics, so
they prove that the shipped client negotiates, trickles ICE, survives a lost socket, and that media
really flows: `inbound-rtp` video bytes, on every side.
"""

from __future__ import annotations

import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import SHORT_GRACE_MS, Browsers, DemoPage, poll, skip_without_chromium

pytestmark = [pytest.mark.e2e, skip_without_chromium]

MEDIA_TIMEOUT_S = 20

CONNECTED_TO = """(others) => demo.call?.state === 'active'
    && others.every((user) => demo.call.peers.get(user)?.connected)"""


def call_through_the_page(caller: DemoPage, callees: list[DemoPage]) -> None:
    """The caller types the callees and clicks Call; each callee clicks Answer."""
    caller.page.fill("#call-users", ", ".join(callee.user for callee in callees))
    caller.page.click("#call")
    for callee in callees:
        callee.page.click("#incoming .answer")


def wait_connected(pages: list[DemoPage]) -> None:
    """Every page's call is active and ICE-connected to every other page."""
    for page in pages:
        others = [other.user for other in pages if other is not page]
        page.wait_for(CONNECTED_TO, others)


def video_bytes(page: DemoPage) -> dict[str, int]:
    """Video bytes received by `page`, by sender."""
    return {user: peer["video"]["bytesReceived"] for user, peer in page.stats().items()}


def wait_video(
    page: DemoPage, senders: list[DemoPage], more_than: dict[str, int] | None = None
) -> dict[str, int]:
    """Poll until `page` has received video from every sender (more than `more_than`, if given)."""
    floor = more_than or {}

    def flowing() -> dict[str, int] | None:
        received = video_bytes(page)
        ok = all(received.get(s.user, 0) > floor.get(s.user, 0) for s in senders)
        return received if ok else None

    return poll(
        flowing,
        MEDIA_TIMEOUT_S,
        lambda: (
            f"{page.user} has not received video from all of {[s.user for s in senders]} "
            f"(more than {floor}): {page.stats()}"
        ),
    )


def record(page: DemoPage, script: str) -> None:
    """Install event recorders in the page: `script` fills `window.rec`."""
    page.js(f"() => {{ window.rec = {{}}; {script} }}")


def test_one_to_one_call_connects_and_video_flows_both_ways(browsers: Browsers) -> None:
    alice, bob = browsers.open("alice"), browsers.open("bob")
    call_through_the_page(alice, [bob])
    wait_connected([alice, bob])
    from_bob = wait_video(alice, [bob])
    from_alice = wait_video(bob, [alice])
    print(f"alice received {from_bob}, bob received {from_alice}")
    stats = alice.stats()[bob.user]
    assert stats["iceConnectionState"] in ("connected", "completed"), stats
    assert stats["signalingState"] == "stable", stats

    # Hanging up ends the call on both sides, with the reason and who.
    alice.page.click("#hangup")
    for page in (alice, bob):
        page.wait_for("() => demo.call === null")
    assert bob.page.inner_text("#call-result") == f"call ended: hangup by {alice.user} (normal)"
    assert alice.js("() => demo.client.calls.size") == bob.js("() => demo.client.calls.size") == 0
    assert alice.js("() => demo.errors") == bob.js("() => demo.errors") == []


def test_three_way_mesh_every_pair_connects_with_video(browsers: Browsers) -> None:
    alice, bob, carol = browsers.open("alice"), browsers.open("bob"), browsers.open("carol")
    call_through_the_page(alice, [bob, carol])
    everyone = [alice, bob, carol]
    wait_connected(everyone)
    for page in everyone:
        received = wait_video(page, [other for other in everyone if other is not page])
        print(f"{page.user} received {received}")

    # Carol leaves: alice and bob stay in the call, still connected to each other.
    carol.page.click("#hangup")
    carol.wait_for("() => demo.call === null")
    for page, other in ((alice, bob), (bob, alice)):
        page.wait_for(
            "([me, other]) => demo.call?.participants.join() === [me, other].sort().join()"
            " && demo.call.peers.size === 1",
            sorted([page.user, other.user]),
        )
        page.wait_for(CONNECTED_TO, [other.user])
    for page in everyone:
        assert page.js("() => demo.errors") == [], page.user


def test_lost_socket_resumes_the_session_and_the_call_goes_on(browsers: Browsers) -> None:
    alice, bob = browsers.open("alice"), browsers.open("bob")
    room = f"room-{browsers.tag}"
    for page in (alice, bob):
        page.page.fill("#room", room)
        page.page.click("#room-join")
        page.wait_for("(room) => demo.client.rooms.has(room)", room)
    alice.page.fill("#watch-users", bob.user)
    alice.page.click("#watch")
    alice.wait_for("(bob) => demo.client.presence.get(bob)?.status === 'online'", bob.user)
    call_through_the_page(alice, [bob])
    wait_connected([alice, bob])
    wait_video(alice, [bob])
    wait_video(bob, [alice])

    record(
        alice,
        """rec.resumed = []; rec.lost = []; rec.roomMessages = []; rec.welcomes = [];
        rec.socket = demo.client.socket; rec.session = demo.client.sessionId; rec.order = [];
        demo.client.on('resumed', (w) => rec.resumed.push(w.session_id));
        demo.client.on('welcome', (w) => {
            rec.welcomes.push(w.resumed); rec.order.push('welcome');
        });
        demo.client.on('session_lost', (l) => rec.lost.push(l.reason));
        demo.client.on('room_message', (m) => {
            rec.roomMessages.push(m.data); rec.order.push('room_message');
        });""",
    )
    record(
        bob,
        """rec.ended = []; rec.left = [];
        demo.client.on('call_ended', (m) => rec.ended.push(m));
        demo.client.on('participant_left', (m) => rec.left.push(m));""",
    )
    seq_before = alice.js("() => demo.client.lastSeq")

    # Alice's socket drops; she stays away 1.5 s. Meanwhile bob sends her a room message: a
    # closing socket delivers nothing more, so it can only reach her through the replay.
    alice.js("() => demo.client.dropConnection(1500)")
    alice.wait_for("() => demo.client.state === 'reconnecting'")
    bob.js("(room) => demo.client.broadcast(room, {text: 'while you were away'})", room)
    alice.wait_for("() => demo.client.state === 'open' && rec.resumed.length > 0")
    alice.wait_for("() => rec.roomMessages.length > 0")

    resumed: dict[str, Any] = alice.js(
        """() => ({resumed: rec.resumed, lost: rec.lost, welcomes: rec.welcomes,
                  newSocket: demo.client.socket !== rec.socket,
                  sameSession: demo.client.sessionId === rec.session,
                  roomMessages: rec.roomMessages, order: rec.order, lastSeq: demo.client.lastSeq,
                  callState: demo.call?.state})"""
    )
    print(f"alice after the drop: {resumed} (last seq before: {seq_before})")
    assert resumed["newSocket"], resumed
    assert resumed["welcomes"] == [True], resumed
    assert resumed["sameSession"] and resumed["lost"] == [], resumed
    assert resumed["roomMessages"] == [{"text": "while you were away"}], resumed
    assert resumed["order"] == ["welcome", "room_message"], resumed
    assert resumed["lastSeq"] > seq_before, resumed
    assert resumed["callState"] == "active", resumed

    # The call never dropped: media keeps flowing both ways after the resume.
    after_alice, after_bob = video_bytes(alice), video_bytes(bob)
    wait_video(alice, [bob], more_than={bob.user: after_alice[bob.user] + 20_000})
    wait_video(bob, [alice], more_than={alice.user: after_bob[alice.user] + 20_000})
    wait_connected([alice, bob])
    assert bob.js("() => rec.ended") == [] and bob.js("() => rec.left") == []
    assert bob.js("() => demo.call?.state") == "active"

    # Signaling works on the resumed session too: alice hangs up, bob is told.
    alice.page.click("#hangup")
    bob.wait_for("() => rec.ended.length === 1")
    assert bob.js("() => rec.ended[0].reason") == "hangup"
    for page in (alice, bob):
        assert page.js("() => demo.errors") == [], page.user


def test_ice_restart_from_both_sides_at_once_renegotiates(browsers: Browsers) -> None:
    """Perfect negotiation: two crossing ICE-restart offers end in one new, connected session."""
    alice, bob = browsers.open("alice"), browsers.open("bob")
    call_through_the_page(alice, [bob])
    wait_connected([alice, bob])
    ufrag = """(other) => {
        const pc = demo.call.peers.get(other).pc;
        return pc.localDescription.sdp.match(/a=ice-ufrag:(\\S+)/)[1];
    }"""
    before = {alice.user: alice.js(ufrag, bob.user), bob.user: bob.js(ufrag, alice.user)}
    both = [alice, bob]
    offers_sent = """() => demo.log.filter(
        (line) => line.includes('→ {"type":"sdp_offer"')).length"""
    offers_before = {page.user: page.js(offers_sent) for page in both}
    for page in both:
        other = next(p for p in both if p is not page)
        page.js("(other) => demo.call.peers.get(other).restartIce()", other.user)
    for page in both:
        other = next(p for p in both if p is not page)
        page.wait_for(
            """([other, old]) => {
                const pc = demo.call.peers.get(other).pc;
                return pc.signalingState === 'stable'
                    && !pc.localDescription.sdp.includes('a=ice-ufrag:' + old);
            }""",
            [other.user, before[page.user]],
        )
    wait_connected(both)
    offers = {page.user: page.js(offers_sent) - offers_before[page.user] for page in both}
    print(f"ICE-restart offers sent: {offers}")
    for page in both:
        other = next(p for p in both if p is not page)
        received = video_bytes(page)[other.user]
        wait_video(page, [other], more_than={other.user: received + 20_000})
        assert page.js("() => demo.errors") == [], page.user


def test_room_call_a_member_who_declined_joins_later(browsers: Browsers) -> None:
    """`call_initiate {room}` rings the members; one declines, then joins the running call."""
    alice, bob, carol = browsers.open("alice"), browsers.open("bob"), browsers.open("carol")
    everyone = [alice, bob, carol]
    room = f"room-{browsers.tag}"
    for page in everyone:
        page.page.fill("#room", room)
        page.page.click("#room-join")
    alice.wait_for("(room) => demo.client.rooms.get(room)?.members.length === 3", room)
    alice.page.click("#room-call")
    bob.page.click("#incoming .answer")
    carol.page.click("#incoming .decline")
    wait_connected([alice, bob])
    carol.wait_for("() => !document.querySelector('#room-join-call').disabled")
    carol.page.click("#room-join-call")
    wait_connected(everyone)
    assert carol.js("() => demo.call.direction") == "joined"
    for page in everyone:
        wait_video(page, [other for other in everyone if other is not page])
        assert page.js("() => demo.errors") == [], page.user


def test_glare_two_users_calling_each_other_end_up_in_one_call(browsers: Browsers) -> None:
    """Crossed `call_initiate`s are merged by the server; each side keeps one Call object."""
    alice, bob = browsers.open("alice"), browsers.open("bob")
    alice.js("(bob) => { window.outgoing = demo.client.call([bob]); }", bob.user)
    bob.js("(alice) => { window.outgoing = demo.client.call([alice]); }", alice.user)
    wait_connected([alice, bob])
    calls = "() => [demo.call.id, [...demo.client.calls.keys()]]"
    ids = {page.user: page.js(calls) for page in (alice, bob)}
    print(f"call ids after the glare: {ids}")
    assert ids[alice.user] == ids[bob.user], ids
    assert ids[alice.user][1] == [ids[alice.user][0]], ids  # one call each, the merged one
    for page in (alice, bob):
        assert page.js("() => document.querySelectorAll('#incoming .ring').length") == 0
        assert page.js("async () => (await window.outgoing) === demo.call"), page.user
        assert page.js("() => demo.errors") == [], page.user
    wait_video(alice, [bob])
    wait_video(bob, [alice])


def test_session_not_resumed_in_time_is_reported_lost(short_grace_browsers: Browsers) -> None:
    """Back after the server forgot the session: `resumed: false`, the call ends, rooms rejoin."""
    browsers = short_grace_browsers
    alice, bob = browsers.open("alice"), browsers.open("bob")
    room = f"room-{browsers.tag}"
    alice.page.fill("#room", room)
    alice.page.click("#room-join")
    alice.wait_for("(room) => demo.client.rooms.has(room)", room)
    call_through_the_page(alice, [bob])
    wait_connected([alice, bob])
    record(
        alice,
        """rec.lost = []; rec.welcomes = []; rec.ended = []; rec.session = demo.client.sessionId;
        demo.client.on('session_lost', (l) => rec.lost.push(l.reason));
        demo.client.on('welcome', (w) => rec.welcomes.push(w.resumed));
        demo.call.on('ended', (e) => rec.ended.push(e.reason));
        // Pretend the grace is long, so the client does try to resume and the server says no.
        demo.client.limits.reconnect_grace_ms = 60000;""",
    )
    alice.js("(ms) => demo.client.dropConnection(ms)", SHORT_GRACE_MS * 3)
    bob.wait_for("() => demo.call === null")
    result = bob.page.inner_text("#call-result")
    assert result.startswith(f"call ended: disconnected by {alice.user}"), result
    alice.wait_for("() => demo.client.state === 'open' && rec.welcomes.length > 0")
    alice.wait_for("(room) => demo.client.rooms.has(room)", room)
    lost = alice.js(
        """() => ({lost: rec.lost, welcomes: rec.welcomes, ended: rec.ended, call: demo.call,
                  newSession: demo.client.sessionId !== rec.session, lastSeq: demo.client.lastSeq,
                  errors: demo.errors.map((e) => e.code)})"""
    )
    print(f"alice after the session was lost: {lost}")
    assert lost["welcomes"] == [False], lost
    assert lost["lost"] == ["not_resumed"], lost
    assert lost["ended"] == ["session_lost"] and lost["call"] is None, lost
    assert lost["newSession"], lost
    assert lost["errors"] == ["session_lost"], lost  # the demo shows it


def acks_received(server_base: str) -> int:
    """The `ack` messages the server has taken, from its /metrics."""
    with urllib.request.urlopen(f"{server_base}/metrics") as response:
        metrics = response.read().decode()
    (received,) = [
        family
        for family in text_string_to_metric_families(metrics)
        if family.name == "callbox_messages_received"
    ]
    return sum(int(sample.value) for sample in received.samples if sample.labels["type"] == "ack")


def test_the_client_acknowledges_what_it_has_processed(browsers: Browsers) -> None:
    """callbox.js sends `ack` each time a quarter of the replay history has come in."""
    alice, bob = browsers.open("alice"), browsers.open("bob")
    quarter = alice.js("() => demo.client.limits.replay_buffer_messages / 4")
    before = acks_received(browsers.server.base)
    alice.js("(bob) => demo.client.send({type: 'presence_subscribe', users: [bob]})", bob.user)
    statuses = ["away", "online"] * quarter
    set_each = "(all) => all.forEach((s) => demo.client.send({type: 'presence_set', status: s}))"
    bob.js(set_each, statuses)
    alice.wait_for("(quarter) => demo.client.ackedSeq >= quarter", quarter)
    acked = alice.js("() => ({acked: demo.client.ackedSeq, last: demo.client.lastSeq})")
    assert acked["acked"] <= acked["last"], acked
    poll(
        lambda: acks_received(browsers.server.base) > before,
        10,
        lambda: f"no ack reached the server (before: {before})",
    )
