"""The code's state tables are exactly `protocol/call-states.yaml`'s, and behave as it says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from callbox.core.errors import IllegalTransition, Refused, SignalingError
from callbox.core.states import (
    CALL_RELAYS,
    CALL_TRANSITIONS,
    PARTY_RELAYS,
    PARTY_TRANSITIONS,
    CallEvent,
    CallState,
    Occupancy,
    PartyEvent,
    PartyState,
    next_call_state,
    occupancy,
)

SPEC = yaml.safe_load((Path(__file__).parents[2] / "protocol" / "call-states.yaml").read_text())


def _as_plain(outcome: object) -> Any:
    if isinstance(outcome, CallState):
        return outcome.value
    assert isinstance(outcome, dict)
    return {occ.value: state.value for occ, state in outcome.items()}


def test_call_states_and_events_match() -> None:
    assert set(SPEC["call"]["states"]) == {s.value for s in CallState}
    assert set(SPEC["call"]["events"]) == {e.value for e in CallEvent}
    assert SPEC["call"]["initial"] == CallState.RINGING.value
    assert SPEC["call"]["final"] == [CallState.ENDED.value]


def test_call_transition_table_is_the_published_one() -> None:
    code = {
        state.value: {event.value: _as_plain(outcome) for event, outcome in events.items()}
        for state, events in CALL_TRANSITIONS.items()
    }
    assert code == SPEC["call"]["transitions"]


def test_party_transition_table_is_the_published_one() -> None:
    assert set(SPEC["party"]["states"]) == {s.value for s in PartyState}
    code = {
        state.value: {event.value: target.value for event, target in events.items()}
        for state, events in PARTY_TRANSITIONS.items()
    }
    assert code == SPEC["party"]["transitions"]


def test_every_timeout_fires_a_known_event() -> None:
    for name, timeout in SPEC["timeouts"].items():
        fires = timeout["fires"]
        assert "event" in fires or fires.get("session_ends") is True, name
        if "event" in fires:
            assert fires["event"] in {e.value for e in CallEvent}, name


@pytest.mark.parametrize(
    ("joined", "ringing", "expected"),
    [
        (2, 0, Occupancy.TWO_OR_MORE_JOINED),
        (5, 3, Occupancy.TWO_OR_MORE_JOINED),
        (1, 1, Occupancy.ONE_JOINED_AND_RINGING),
        (1, 0, Occupancy.DESERTED),
        (0, 2, Occupancy.DESERTED),
        (0, 0, Occupancy.DESERTED),
    ],
)
def test_occupancy(joined: int, ringing: int, expected: Occupancy) -> None:
    assert occupancy(joined, ringing) is expected


def test_illegal_transition_is_refused() -> None:
    with pytest.raises(IllegalTransition):
        next_call_state(CallState.ACTIVE, CallEvent.MERGE, 2, 0)
    with pytest.raises(IllegalTransition) as caught:
        next_call_state(CallState.ENDED, CallEvent.JOIN, 2, 0)
    assert isinstance(caught.value, Refused) and isinstance(caught.value, SignalingError)
    assert caught.value.code == "invalid_state"


def test_relays_are_legal_only_between_joined_parties_of_an_active_call() -> None:
    assert {state for state, allowed in CALL_RELAYS.items() if allowed} == {CallState.ACTIVE}
    assert {state for state, allowed in PARTY_RELAYS.items() if allowed} == {PartyState.JOINED}


def test_leave_outcome_depends_on_who_is_left() -> None:
    assert next_call_state(CallState.ACTIVE, CallEvent.LEAVE, 2, 0) is CallState.ACTIVE
    assert next_call_state(CallState.ACTIVE, CallEvent.LEAVE, 1, 1) is CallState.RINGING
    assert next_call_state(CallState.ACTIVE, CallEvent.LEAVE, 1, 0) is CallState.ENDED


def test_party_events_mirror_call_events() -> None:
    assert {e.value for e in PartyEvent} <= {e.value for e in CallEvent}
