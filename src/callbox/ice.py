"""The ICE servers a session is given, and when its TURN credentials need replacing.

With ``TURN_SECRET`` the credentials are coturn's ``use-auth-secret`` ("TURN REST API") kind:
username ``"<expiry>:<user_id>"`` where ``<expiry>`` is an absolute Unix time in seconds, and
credential ``base64(HMAC-SHA1(secret, username))``. The TURN server recomputes the HMAC, so it
shares nothing with us but the secret. Because the expiry is absolute, credentials handed out in
``welcome`` stop working at that instant however long the session lives: hence
`credentials_refresh_at`, and the ``ice_servers`` message that carries fresh ones.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from callbox.config import Config
from callbox.messages import IceServer

REFRESH_FRACTION = 0.8
"""Fresh credentials are pushed once this fraction of their lifetime has passed..."""
REFRESH_MARGIN_S = 60
"""...and at the latest this long before they expire, so a slow client has time to apply them."""


def ice_servers_for(config: Config, user_id: str, *, now: float) -> list[IceServer]:
    """``welcome``'s / ``ice_servers``' list for `user_id`, credentials issued at `now` (Unix s)."""
    servers: list[IceServer] = []
    if config.stun_servers:
        servers.append(IceServer(urls=list(config.stun_servers)))
    if config.turn_servers:
        servers.append(_turn_server(config, user_id, now))
    return servers


def _turn_server(config: Config, user_id: str, now: float) -> IceServer:
    urls = list(config.turn_servers)
    if config.turn_secret is None:
        return IceServer(
            urls=urls, username=config.turn_username, credential=config.turn_credential
        )
    username = f"{int(now) + config.turn_ttl_s}:{user_id}"
    credential = turn_rest_credential(config.turn_secret, username)
    return IceServer(urls=urls, username=username, credential=credential)


def turn_rest_credential(secret: str, username: str) -> str:
    """coturn's ``use-auth-secret`` password for `username`: base64(HMAC-SHA1(secret, username))."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def credentials_refresh_at(config: Config, *, now: float) -> float | None:
    """When (Unix s) to push fresh credentials to a session given some at `now`; None: never.

    Only ephemeral TURN credentials expire. `now` must be the same instant passed to
    `ice_servers_for` when the current credentials were issued.
    """
    if not config.turn_servers or config.turn_secret is None:
        return None
    expires_at = int(now) + config.turn_ttl_s
    return min(now + REFRESH_FRACTION * config.turn_ttl_s, expires_at - REFRESH_MARGIN_S)
