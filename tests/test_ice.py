from __future__ import annotations

import pytest

from callbox.config import Config
from callbox.ice import credentials_refresh_at, ice_servers_for
from callbox.messages import IceServer

NOW = 1_700_000_000.75
STUN = ("stun:stun.example:3478",)
TURN = ("turn:127.0.0.1:3478?transport=udp", "turn:127.0.0.1:3478?transport=tcp")
EPHEMERAL = Config(stun_servers=STUN, turn_servers=TURN, turn_secret="north-wind")
STATIC = Config(turn_servers=TURN, turn_username="u", turn_credential="p")


def test_no_servers_configured() -> None:
    assert ice_servers_for(Config(), "alice", now=NOW) == []
    assert credentials_refresh_at(Config(), now=NOW) is None


def test_stun_urls_form_one_server_without_credentials() -> None:
    config = Config(stun_servers=(*STUN, "stuns:stun.example:5349"))
    assert ice_servers_for(config, "alice", now=NOW) == [
        IceServer(urls=[*STUN, "stuns:stun.example:5349"])
    ]


def test_static_turn_credentials_are_passed_through_and_never_refreshed() -> None:
    assert ice_servers_for(STATIC, "alice", now=NOW) == [
        IceServer(urls=list(TURN), username="u", credential="p")
    ]
    assert credentials_refresh_at(STATIC, now=NOW) is None


def test_turn_rest_credentials_match_coturn_use_auth_secret() -> None:
    # Computed independently:
    #   printf '1700086400:alice' | openssl dgst -sha1 -hmac 'north-wind' -binary | base64
    assert ice_servers_for(EPHEMERAL, "alice", now=NOW) == [
        IceServer(urls=list(STUN)),
        IceServer(
            urls=list(TURN), username="1700086400:alice", credential="2cdv8ItP/4kX53j3SEoTDhjFpeM="
        ),
    ]


def test_the_username_carries_an_absolute_expiry() -> None:
    config = Config(turn_servers=TURN, turn_secret="north-wind", turn_ttl_s=600)
    [server] = ice_servers_for(config, "bob:phone", now=NOW)
    assert server.username == f"{1_700_000_000 + 600}:bob:phone"
    [later] = ice_servers_for(config, "bob:phone", now=NOW + 30)
    assert later.username == f"{1_700_000_030 + 600}:bob:phone"
    assert later.credential != server.credential


def test_refresh_at_eighty_percent_of_a_long_ttl() -> None:
    assert credentials_refresh_at(EPHEMERAL, now=NOW) == pytest.approx(NOW + 0.8 * 86_400)


def test_refresh_at_least_a_minute_before_a_short_ttl_expires() -> None:
    config = Config(turn_servers=TURN, turn_secret="north-wind", turn_ttl_s=120)
    refresh = credentials_refresh_at(config, now=NOW)
    assert refresh == 1_700_000_000 + 120 - 60
    assert refresh > NOW


@pytest.mark.parametrize("ttl_s", [120, 299, 300, 301, 3600, 86_400])
def test_refresh_is_after_issue_and_a_minute_before_expiry(ttl_s: int) -> None:
    config = Config(turn_servers=TURN, turn_secret="north-wind", turn_ttl_s=ttl_s)
    [server] = ice_servers_for(config, "alice", now=NOW)
    assert server.username is not None
    expires_at = int(server.username.split(":")[0])
    refresh = credentials_refresh_at(config, now=NOW)
    assert refresh is not None
    assert NOW < refresh <= expires_at - 60
