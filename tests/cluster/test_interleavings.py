"""Random interleavings of events on three nodes over the in-memory shared store.

Each node runs its events as the shell does, through a `Pipeline`: a client message on a
connection that carries a session runs beside the others (the node's commits go as one batch,
its loads as one), anything else alone. A node's step is one of: taking the next event in, or
one round trip (its batch of commits, or its loads). Between any two steps of one node, any
other node may step: a commit may find what it read changed, conflict and run again, or give
up (`Unavailable`: the client would be told `unavailable`, and nothing of it happened).
Whatever the order, each connection sees `seq` 1, 2, 3, ... with no gap or repeat, every party
of a call is told of its end at most once, no event fails as a bug (`internal`, or a committed
event's rerun that came to another transaction), and once every session has said `bye`, no
record and no outbox is left in the store (but when each user was last seen, which expires by
itself).
"""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tests.cluster.harness import PipelineHarness
from tests.core.harness import Wire, initiate

USERS = ("alice", "bob", "carol", "dave")


class Interleavings(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.h = PipelineHarness(max_in_flight=8)  # small: pipelines fill up too
        self.conns: dict[str, int] = {}
        self.seen: dict[int, int] = {}
        """Per connection, how many of its messages the invariants have checked."""
        self.ended: set[tuple[int, str]] = set()
        """(connection, call id) of every `call_ended`."""
        self.call_ids: list[str] = []
        self.tokens: dict[str, str] = {}
        """Each user's resume token, from the last `welcome` it read (none while one is due)."""

    @initialize()
    def sign_in(self) -> None:
        for user in USERS:
            self.conns[user] = self.h.login(user)
            self.tokens[user] = self.h.welcome_of[self.conns[user]]["resume_token"]
        self.h.stepping = True

    def _send(self, user: str, message: Wire) -> None:
        self.h.send(self.conns[user], message)

    @rule(user=st.sampled_from(USERS), to=st.sampled_from(USERS))
    def call(self, user: str, to: str) -> None:
        """A call under a new id: each id names one call, so each party hears of its end once."""
        call_id = f"call-{len(self.call_ids):04}"
        self.call_ids.append(call_id)
        self._send(user, initiate(call_id, to))

    @precondition(lambda self: bool(self.call_ids))
    @rule(user=st.sampled_from(USERS), data=st.data())
    def answer(self, user: str, data: st.DataObject) -> None:
        self._send(user, {"type": "call_answer", "call_id": self._call_id(data)})

    @precondition(lambda self: bool(self.call_ids))
    @rule(user=st.sampled_from(USERS), data=st.data())
    def reject(self, user: str, data: st.DataObject) -> None:
        self._send(user, {"type": "call_reject", "call_id": self._call_id(data)})

    @precondition(lambda self: bool(self.call_ids))
    @rule(user=st.sampled_from(USERS), data=st.data())
    def hang_up(self, user: str, data: st.DataObject) -> None:
        self._send(user, {"type": "hangup", "call_id": self._call_id(data)})

    @precondition(lambda self: bool(self.call_ids))
    @rule(user=st.sampled_from(USERS), to=st.sampled_from(USERS), data=st.data())
    def offer(self, user: str, to: str, data: st.DataObject) -> None:
        message = {"type": "sdp_offer", "call_id": self._call_id(data), "to": to, "sdp": "v=0"}
        self._send(user, message)

    def _call_id(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from(self.call_ids))

    @rule(user=st.sampled_from(USERS), watched=st.sampled_from(USERS))
    def watch(self, user: str, watched: str) -> None:
        self._send(user, {"type": "presence_subscribe", "users": [watched]})

    @rule(user=st.sampled_from(USERS))
    def join_the_room(self, user: str) -> None:
        self._send(user, {"type": "room_join", "room": "lobby"})

    @rule(data=st.data())
    def reconnect(self, data: st.DataObject) -> None:
        """A user's connection drops and its client resumes on a new one (on the next node in
        turn), from the last `seq` it read: the drop runs beside other events, the resume's
        `hello` alone."""
        ready = [user for user in USERS if user in self.tokens]
        if not ready:
            return
        user = data.draw(st.sampled_from(ready))
        old = self.conns[user]
        self.sequences_have_no_gap_and_calls_end_once()  # what the client read before the drop
        self.h.drop(old)
        new = self.h.resume(user, self.tokens.pop(user), last_seq=self.seen.get(-old, 0))
        self.conns[user] = new
        self.seen[-new] = self.seen.get(-old, 0)

    @precondition(lambda self: bool(self.h.busy()))
    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        self.h.step(data.draw(st.sampled_from(self.h.busy())))

    @invariant()
    def sequences_have_no_gap_and_calls_end_once(self) -> None:
        for user, conn in self.conns.items():
            inbox = self.h.inbox[conn]
            for message in inbox[self.seen.get(conn, 0) :]:
                assert message.get("code") != "internal", message
                if message["type"] == "welcome":
                    assert message["resumed"] is True, message
                    self.tokens[user] = message["resume_token"]
                if "seq" in message:
                    expected = self.seen.get(-conn, 0) + 1
                    assert message["seq"] == expected, (conn, message, expected)
                    self.seen[-conn] = expected
                if message["type"] == "call_ended":
                    key = (conn, message["call_id"])
                    assert key not in self.ended, f"{key} ended twice"
                    self.ended.add(key)
            self.seen[conn] = len(inbox)

    def teardown(self) -> None:
        h = self.h
        h.settle()
        h.stepping = False
        for conn in self.conns.values():
            h.send(conn, {"type": "bye"})
        self.sequences_have_no_gap_and_calls_end_once()
        left = [key for key in h.backend.records if not key.startswith("last_seen:")]
        assert left == [], left  # when users were last seen is kept, for `LAST_SEEN_TTL_MS`
        assert h.backend.outboxes_by_session == {}


def run_interleavings(max_examples: int) -> None:
    Interleavings.TestCase.settings = settings(
        max_examples=max_examples, stateful_step_count=40, deadline=None
    )
    Interleavings.TestCase().runTest()


def test_random_interleavings_on_three_nodes() -> None:
    run_interleavings(max_examples=60)


@pytest.mark.slow
def test_many_random_interleavings_on_three_nodes() -> None:
    run_interleavings(max_examples=300)
