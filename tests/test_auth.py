from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from callbox.auth import AuthError, authenticate, is_valid_user_id
from callbox.config import Config
from callbox.messages import Hello

SECRET = "correct horse battery staple 0123456789"
NOW = 1_700_000_000.5
"""Long past: a token valid at NOW is expired for PyJWT's wall-clock check, so tests that pass
prove `now` is the clock used."""

SECURE = Config(jwt_secret=SECRET)
DEVELOPMENT = Config()


def token(claims: dict[str, Any], *, key: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def valid_claims(**overrides: Any) -> dict[str, Any]:
    return {"sub": "alice", "exp": int(NOW) + 60} | overrides


def refused(hello: Hello, config: Config = SECURE, now: float = NOW) -> str:
    with pytest.raises(AuthError) as caught:
        authenticate(hello, config, now=now)
    message = str(caught.value)
    assert SECRET not in message
    return message


# ---------------------------------------------------------------------------------------------
# Development mode


def test_development_mode_takes_the_user_id_as_given() -> None:
    assert authenticate(Hello(user_id="bob"), DEVELOPMENT, now=NOW) == "bob"


def test_development_mode_prefers_user_id_over_a_token() -> None:
    hello = Hello(user_id="bob", token=token(valid_claims()))
    assert authenticate(hello, DEVELOPMENT, now=NOW) == "bob"


def test_development_mode_refuses_a_token_alone_and_says_why() -> None:
    message = refused(Hello(token=token(valid_claims())), DEVELOPMENT)
    assert message == (
        "this server has no auth secret (development mode): send 'user_id', not 'token'"
    )


def test_development_mode_needs_a_user_id() -> None:
    assert refused(Hello(), DEVELOPMENT) == "hello needs 'user_id' (development mode)"


@pytest.mark.parametrize("user_id", ["", "a b", "x" * 65, "tab\t"])
def test_development_mode_checks_the_user_id(user_id: str) -> None:
    assert "not a valid user id" in refused(Hello(user_id=user_id), DEVELOPMENT)


# ---------------------------------------------------------------------------------------------
# With a secret


def test_a_valid_token_gives_its_sub() -> None:
    assert authenticate(Hello(token=token(valid_claims())), SECURE, now=NOW) == "alice"


def test_a_matching_user_id_is_accepted() -> None:
    hello = Hello(token=token(valid_claims()), user_id="alice")
    assert authenticate(hello, SECURE, now=NOW) == "alice"


def test_a_user_id_other_than_sub_is_refused() -> None:
    hello = Hello(token=token(valid_claims()), user_id="mallory")
    assert refused(hello) == "hello 'user_id' does not match the token's 'sub'"


def test_a_user_id_alone_is_not_enough() -> None:
    assert refused(Hello(user_id="alice")) == "hello needs 'token': this server verifies tokens"


def test_expiry_is_checked_against_now_without_leeway() -> None:
    hello = Hello(token=token(valid_claims(exp=int(NOW) + 1)))
    assert authenticate(hello, SECURE, now=NOW) == "alice"
    assert refused(hello, now=NOW + 0.5) == "token expired"
    assert refused(hello, now=NOW + 1) == "token expired"


def test_a_token_expired_by_the_wall_clock_is_refused() -> None:
    hello = Hello(token=token(valid_claims(exp=int(time.time()) - 1)))
    assert refused(hello, now=time.time()) == "token expired"


def test_a_token_valid_now_is_refused_later() -> None:
    hello = Hello(token=token(valid_claims(exp=int(time.time()) + 3600)))
    assert authenticate(hello, SECURE, now=time.time()) == "alice"
    assert refused(hello, now=time.time() + 3600) == "token expired"


def test_exp_is_required() -> None:
    assert refused(Hello(token=token({"sub": "alice"}))) == "token has no 'exp'"


def test_exp_must_be_a_number() -> None:
    assert (
        refused(Hello(token=token(valid_claims(exp="tomorrow")))) == "token 'exp' is not a number"
    )


def test_sub_is_required() -> None:
    assert refused(Hello(token=token({"exp": int(NOW) + 60}))) == "token has no 'sub'"


def test_sub_must_be_a_string() -> None:
    assert refused(Hello(token=token(valid_claims(sub=42)))) == "token 'sub' is not a string"


@pytest.mark.parametrize("sub", ["", "al ice", "x" * 65])
def test_sub_must_be_a_valid_user_id(sub: str) -> None:
    assert "'sub' is not a valid user id" in refused(Hello(token=token(valid_claims(sub=sub))))


def test_a_token_not_yet_valid_is_refused() -> None:
    hello = Hello(token=token(valid_claims(nbf=int(NOW) + 10)))
    assert refused(hello) == "token not valid yet ('nbf' is in the future)"
    assert authenticate(hello, SECURE, now=NOW + 10) == "alice"


def test_iat_in_the_future_is_not_held_against_the_token() -> None:
    hello = Hello(token=token(valid_claims(iat=int(NOW) + 5)))
    assert authenticate(hello, SECURE, now=NOW) == "alice"


def test_a_wrong_secret_is_refused() -> None:
    hello = Hello(token=token(valid_claims(), key="another secret, just as long as it is"))
    assert refused(hello) == "token signature invalid"


def test_an_unsigned_token_is_refused() -> None:
    hello = Hello(token=token(valid_claims(), key="", algorithm="none"))
    assert refused(hello) == "token algorithm not allowed (expected HS256)"


def test_another_hmac_algorithm_is_refused() -> None:
    hello = Hello(token=token(valid_claims(), key=SECRET * 2, algorithm="HS512"))
    assert refused(hello) == "token algorithm not allowed (expected HS256)"


def test_the_configured_algorithm_is_used() -> None:
    config = Config(jwt_secret=SECRET * 2, jwt_algorithm="HS512")
    hello = Hello(token=token(valid_claims(), key=SECRET * 2, algorithm="HS512"))
    assert authenticate(hello, config, now=NOW) == "alice"
    assert refused(Hello(token=token(valid_claims(), key=SECRET * 2)), config) == (
        "token algorithm not allowed (expected HS512)"
    )


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "Bearer x.y.z"])
def test_a_malformed_token_is_refused(garbage: str) -> None:
    assert refused(Hello(token=garbage)) == "token malformed"


def test_other_claim_problems_are_reported_without_the_secret() -> None:
    hello = Hello(token=token(valid_claims(aud="some-other-service")))
    assert refused(hello).startswith("token invalid: ")


def test_a_token_subject_must_be_a_user_id_the_protocol_can_carry() -> None:
    assert not is_valid_user_id("ali\x01ce")
    assert not is_valid_user_id("bob\ufeff")
    assert is_valid_user_id("alice@example.org")
