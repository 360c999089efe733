"""Who a ``hello`` speaks for: a verified JWT's ``sub``, or in development mode the claimed user id.

Time is passed in (``now``, Unix seconds) rather than read, so expiry is testable without sleeping:
PyJWT's own time checks read the wall clock, so they are turned off and done here instead.
"""

from __future__ import annotations

import re
from typing import Any

import jwt
from jwt.exceptions import InvalidSubjectError

from callbox.config import Config
from callbox.messages import Hello

USER_ID_MAX_CHARS = 64


class AuthError(Exception):
    """``hello`` does not prove who it speaks for; the message is safe to send to the client."""


USER_ID = re.compile(r"[^\s\x00-\x1f\x7f-\x9f\ufeff]+")
"""The schemas' `userId` pattern: a token's `sub` must be a user id the protocol carries."""


def is_valid_user_id(value: object) -> bool:
    """1-64 characters, none of them whitespace or control characters (as the schema says)."""
    return (
        isinstance(value, str)
        and 1 <= len(value) <= USER_ID_MAX_CHARS
        and USER_ID.fullmatch(value) is not None
    )


def authenticate(hello: Hello, config: Config, *, now: float) -> str:
    """The user id ``hello`` proves, or `AuthError` saying why not."""
    if config.jwt_secret is None:
        return _development_user(hello)
    if hello.token is None:
        raise AuthError("hello needs 'token': this server verifies tokens")
    claims = _decode(hello.token, config.jwt_secret, config.jwt_algorithm)
    _check_times(claims, now)
    subject = claims["sub"]
    if not is_valid_user_id(subject):
        raise AuthError("token 'sub' is not a valid user id (1-64 characters, no whitespace)")
    if hello.user_id is not None and hello.user_id != subject:
        raise AuthError("hello 'user_id' does not match the token's 'sub'")
    return str(subject)


def _development_user(hello: Hello) -> str:
    """No secret: the client says who it is (a token, if also sent, is not looked at)."""
    if hello.user_id is None:
        if hello.token is not None:
            raise AuthError(
                "this server has no auth secret (development mode): send 'user_id', not 'token'"
            )
        raise AuthError("hello needs 'user_id' (development mode)")
    if not is_valid_user_id(hello.user_id):
        raise AuthError("'user_id' is not a valid user id (1-64 characters, no whitespace)")
    return hello.user_id


def _decode(token: str, secret: str, algorithm: str) -> dict[str, Any]:
    """Signature, algorithm and required claims; PyJWT's messages never contain the key."""
    try:
        return jwt.decode(
            token,
            secret,
            algorithms=[algorithm],
            options={
                "require": ["exp", "sub"],
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except jwt.InvalidAlgorithmError:
        raise AuthError(f"token algorithm not allowed (expected {algorithm})") from None
    except jwt.InvalidSignatureError:
        raise AuthError("token signature invalid") from None
    except jwt.MissingRequiredClaimError as error:
        raise AuthError(f"token has no {error.claim!r}") from None
    except InvalidSubjectError:
        raise AuthError("token 'sub' is not a string") from None
    except jwt.DecodeError:
        raise AuthError("token malformed") from None
    except jwt.InvalidTokenError as error:
        raise AuthError(f"token invalid: {error}") from None


def _check_times(claims: dict[str, Any], now: float) -> None:
    """``exp`` (required) must be after ``now``, ``nbf`` (optional) not after it; no leeway.

    ``iat`` is informational and not checked: a token issued by a clock a second ahead is fine.
    """
    exp, nbf = claims["exp"], claims.get("nbf")
    if not _is_number(exp):
        raise AuthError("token 'exp' is not a number")
    if exp <= now:
        raise AuthError("token expired")
    if nbf is not None:
        if not _is_number(nbf):
            raise AuthError("token 'nbf' is not a number")
        if nbf > now:
            raise AuthError("token not valid yet ('nbf' is in the future)")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
