"""The admin API: the deployer's backend ends calls, removes users and reads who is on, over
HTTP on the signaling port, under `/api/v1/` (protocol/openapi.yaml is its contract;
docs/backend.md its guide; docs/decisions/0016-admin-api.md says why it is built so).

Off unless `ADMIN_TOKEN` is set: every path under `/api/` is then 404, as any unknown path.
On, every request needs `Authorization: Bearer <ADMIN_TOKEN>`, compared in constant time;
without it, 401 with `WWW-Authenticate: Bearer` and nothing else said (not even whether the
path exists). Every request is logged at INFO with the client's address and its answer (a
refused one at WARNING), and each change once more, with what it did.

What changes something is an event of the core (`Switchboard.terminate_call`, `remove_user`)
run through the server's `apply`: synchronously in a single process, through the node's event
task in a cluster, where it may not be applied (`ClusterUnavailable`: 503 with `Retry-After`).
What reads goes through the server's queries: the single process's store, or the shared store.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from collections.abc import Callable
from http import HTTPStatus
from importlib.resources import files
from typing import Any, Final, Protocol
from urllib.parse import unquote

import orjson
import trio

from callbox.cluster.backend import ClusterUnavailable
from callbox.core.actions import Action, CloseCall
from callbox.core.calls import Call
from callbox.core.presence import merged_status
from callbox.core.sessions import Session
from callbox.core.store import User
from callbox.core.switchboard import Switchboard
from callbox.server.transport.http import HttpRequest, HttpResponse

__all__ = ["API_PREFIX", "AdminApi", "AdminServer", "call_view", "user_view"]

log = logging.getLogger("callbox.admin")

API_PREFIX: Final = "/api/"
V1: Final = "/api/v1/"
MAX_LISTED_CALLS: Final = 1_000
"""Calls one `GET /api/v1/calls` lists at most (`truncated` says when there were more)."""
APPLY_TIMEOUT_S: Final = 5.0
"""How long a DELETE waits for its event (a node's queue, then the store's retries, 2 s): less
than the transport's handshake timeout, so that the client gets 503 rather than 408."""
RETRY_AFTER_S: Final = 1
INTERNAL_MESSAGE: Final = "the server failed to do this; it has been logged"
JSON: Final = "application/json"
USER_ID: Final = re.compile("[^\\s\x00-\x1f\x7f-\x9f\ufeff]{1,64}")
"""What a user id may be (schemas/common.json, `userId`)."""
OPENAPI_PATH: Final = f"{V1}openapi.yaml"


class AdminServer(Protocol):
    """What the admin API needs of the server (`SignalingServer`, or a cluster node's)."""

    switchboard: Switchboard

    def core_now(self) -> float:
        """The core's clock now (a cluster's is the store's)."""
        ...

    async def apply(self, event: Callable[[], list[Action]]) -> list[Action]:
        """Run `event` as any event is run, carry out its actions, return them; raises
        `ClusterUnavailable` if it was not applied."""
        ...

    async def find_call(self, call_id: str) -> Call | None: ...
    async def list_calls(self, limit: int) -> list[Call]:
        """Up to `limit` calls, in no particular order."""
        ...

    async def find_user(self, user_id: str) -> tuple[User, list[Session]] | None:
        """The user's record and its sessions (None: no session and no call)."""
        ...

    async def statistics(self) -> dict[str, int]: ...


def call_view(call: Call, now: float) -> dict[str, Any]:
    """A call as the API shows it (`Call` in protocol/openapi.yaml)."""
    view: dict[str, Any] = {
        "call_id": call.call_id,
        "caller": call.caller,
        "state": str(call.state),
        "media": {"audio": call.media.audio, "video": call.media.video},
        "parties": [
            {"user_id": party.user_id, "state": str(party.state)}
            | ({} if party.session_id is None else {"session_id": party.session_id})
            for party in call.parties.values()
        ],
    }
    if call.room is not None:
        view["room"] = call.room
    if call.metadata is not None:
        view["metadata"] = call.metadata
    if call.ends_at is not None:
        view["ends_in_ms"] = max(0, round((call.ends_at - now) * 1000))
    return view


def user_view(user: User, sessions: list[Session]) -> dict[str, Any]:
    """A user's presence and sessions (`User` in protocol/openapi.yaml)."""
    return {
        "user_id": user.user_id,
        "status": merged_status(sessions),
        "calls": sorted(user.calls),
        "sessions": [
            {
                "session_id": session.session_id,
                "connected": session.conn is not None,
                "presence": session.presence,
                "rooms": sorted(session.rooms),
            }
            | ({} if session.device_id is None else {"device_id": session.device_id})
            | ({} if session.call_id is None else {"call_id": session.call_id})
            for session in sessions
        ],
    }


def _json(status: HTTPStatus, body: object, *extra: tuple[str, str]) -> HttpResponse:
    headers = [("Content-Type", JSON), ("Cache-Control", "no-store"), *extra]
    return status.value, headers, orjson.dumps(body)


def _error(status: HTTPStatus, code: str, message: str, *extra: tuple[str, str]) -> HttpResponse:
    return _json(status, {"error": code, "message": message}, *extra)


def _not_allowed(allow: str) -> HttpResponse:
    return _error(
        HTTPStatus.METHOD_NOT_ALLOWED,
        "method_not_allowed",
        f"this resource allows {allow}",
        ("Allow", allow),
    )


def _openapi_document() -> bytes:
    """protocol/openapi.yaml, as installed in the package (read once)."""
    return (files("callbox") / "openapi.yaml").read_bytes()


class AdminApi:
    """Answers every request under `API_PREFIX` for a server whose `ADMIN_TOKEN` is `token`."""

    def __init__(self, token: str, server: AdminServer) -> None:
        self._token = token.encode()
        self._server = server
        self._openapi = _openapi_document()

    async def handle(self, request: HttpRequest) -> HttpResponse:
        if not self._authorized(request):
            log.warning(
                "admin: %s %r from %s: unauthorized", request.method, request.path, request.client
            )
            return _error(
                HTTPStatus.UNAUTHORIZED,
                "unauthorized",
                "a bearer token is required",
                ("WWW-Authenticate", "Bearer"),
            )
        try:
            response = await self._route(request)
        except ClusterUnavailable as unavailable:
            log.warning(
                "admin: %s %r from %s: not applied: %s",
                request.method,
                request.path,
                request.client,
                unavailable,
            )
            return _error(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "unavailable",
                f"{unavailable}; try again",
                ("Retry-After", str(RETRY_AFTER_S)),
            )
        log.info(
            "admin: %s %r from %s: %d",
            request.method,
            request.path,
            request.client,
            response[0],
        )
        return response

    def _authorized(self, request: HttpRequest) -> bool:
        fields = request.headers.get_all("Authorization")
        if len(fields) != 1:
            return False
        scheme, _, credentials = fields[0].strip().partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            credentials.strip().encode(), self._token
        )

    async def _route(self, request: HttpRequest) -> HttpResponse:
        path, method = request.path, request.method
        reading = method in ("GET", "HEAD")
        parts = [unquote(part) for part in path.removeprefix(V1).split("/")]
        if not path.startswith(V1) or "" in parts:
            return _error(HTTPStatus.NOT_FOUND, "not_found", f"no resource at {path}")
        unknown = set(request.query_names()) - ({"user"} if parts == ["calls"] else set())
        if unknown:
            names = ", ".join(sorted(unknown))
            return _error(
                HTTPStatus.BAD_REQUEST, "bad_request", f"unknown query parameters: {names}"
            )
        match parts:
            case ["calls"]:
                return await self._calls(request) if reading else _not_allowed("GET, HEAD")
            case ["calls", call_id]:
                if reading:
                    return await self._call(call_id)
                if method == "DELETE":
                    return await self._terminate(call_id, request.client)
                return _not_allowed("GET, HEAD, DELETE")
            case ["users", user_id]:
                return await self._user(user_id) if reading else _not_allowed("GET, HEAD")
            case ["users", user_id, "sessions"]:
                if method == "DELETE":
                    return await self._remove(user_id, request.client)
                return _not_allowed("DELETE")
            case ["stats"]:
                if not reading:
                    return _not_allowed("GET, HEAD")
                return _json(HTTPStatus.OK, await self._server.statistics())
            case ["openapi.yaml"]:
                if not reading:
                    return _not_allowed("GET, HEAD")
                return HTTPStatus.OK.value, [("Content-Type", "application/yaml")], self._openapi
        return _error(HTTPStatus.NOT_FOUND, "not_found", f"no resource at {path}")

    async def _calls(self, request: HttpRequest) -> HttpResponse:
        users = request.query_values("user")
        if len(users) > 1:
            return _error(HTTPStatus.BAD_REQUEST, "bad_request", "give at most one user")
        if users and not USER_ID.fullmatch(users[0]):
            reason = "user must be a user id: 1-64 characters, no whitespace, no control character"
            return _error(HTTPStatus.BAD_REQUEST, "bad_request", reason)
        server, now = self._server, self._server.core_now()
        if users:
            found = await server.find_user(users[0])
            ids = sorted(found[0].calls) if found is not None else []
            calls = [call for call in [await server.find_call(i) for i in ids] if call is not None]
            truncated = False
        else:
            calls = await server.list_calls(MAX_LISTED_CALLS + 1)
            truncated = len(calls) > MAX_LISTED_CALLS
            calls = sorted(calls[:MAX_LISTED_CALLS], key=lambda call: call.call_id)
        views = [call_view(call, now) for call in calls]
        return _json(HTTPStatus.OK, {"calls": views, "truncated": truncated})

    async def _call(self, call_id: str) -> HttpResponse:
        call = await self._server.find_call(call_id)
        if call is None:
            return _error(HTTPStatus.NOT_FOUND, "unknown_call", f"no call {call_id}")
        return _json(HTTPStatus.OK, call_view(call, self._server.core_now()))

    async def _user(self, user_id: str) -> HttpResponse:
        found = await self._server.find_user(user_id)
        if found is None:
            return _error(HTTPStatus.NOT_FOUND, "unknown_user", f"{user_id} has no session")
        return _json(HTTPStatus.OK, user_view(*found))

    async def _terminate(self, call_id: str, client: str) -> HttpResponse:
        server = self._server
        if await server.find_call(call_id) is None:
            return _error(HTTPStatus.NOT_FOUND, "unknown_call", f"no call {call_id}")
        now, wall = server.core_now(), time.time()
        actions = await self._apply(lambda: server.switchboard.terminate_call(call_id, now, wall))
        if CloseCall(call_id, "terminated") not in actions:  # it ended meanwhile, or a bug
            if await server.find_call(call_id) is None:
                return _error(HTTPStatus.NOT_FOUND, "unknown_call", f"call {call_id} has ended")
            return _error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal", INTERNAL_MESSAGE)
        log.info("admin: call %s terminated, asked by %s", call_id, client)
        return HTTPStatus.NO_CONTENT.value, [], b""

    async def _remove(self, user_id: str, client: str) -> HttpResponse:
        server = self._server
        if await server.find_user(user_id) is None:
            return _error(HTTPStatus.NOT_FOUND, "unknown_user", f"{user_id} has no session")
        now, wall = server.core_now(), time.time()
        await self._apply(lambda: server.switchboard.remove_user(user_id, now, wall))
        log.info("admin: sessions of user %s removed, asked by %s", user_id, client)
        return HTTPStatus.NO_CONTENT.value, [], b""

    async def _apply(self, event: Callable[[], list[Action]]) -> list[Action]:
        with trio.move_on_after(APPLY_TIMEOUT_S):
            return await self._server.apply(event)
        raise ClusterUnavailable(
            f"not done within {APPLY_TIMEOUT_S} s (it may still be: read before trying again)"
        )
