"""The files the server hands out: the demo page, its client, and the protocol's JSON Schemas.

All are read once at start-up and served from memory, each with a strong `ETag` (so a browser
revalidates with `If-None-Match` and gets 304, answered by the transport, `transport.http`) and
`Cache-Control: no-cache` (so it always does revalidate: a redeployed server's files are seen at
once).

Cross-origin reads (CORS, a page elsewhere importing `/callbox.js` or fetching a schema): with no
`ALLOWED_ORIGINS`, any site may (`Access-Control-Allow-Origin: *`: the files are public and
carry no credentials); with a list, the response names the request's `Origin` if it is listed,
and says `Vary: Origin` in any case, so that a cache never hands one site's answer to another.
These are simple GETs: no preflight, so no `OPTIONS` (the transport answers it 405).

The schemas are served at `/schemas/` + their path in the package (`/schemas/client/hello.json`),
byte for byte the files the codec validates with (`codec.SCHEMA_FILES`). Their `$id`s are
`SCHEMA_BASE` + the same path, so the `$ref`s between them (all relative) resolve the same way
against either: a client maps `SCHEMA_BASE` to the server's `/schemas/`. `GET /schemas/` lists
them, with that base.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping

import orjson
from websockets.datastructures import Headers, MultipleValuesError

from callbox.codec import SCHEMA_BASE, SCHEMA_FILES
from callbox.server.transport.http import HttpResponse

__all__ = ["SCHEMAS_PATH", "SCHEMA_CONTENT_TYPE", "StaticFiles", "schema_files"]

SCHEMAS_PATH = "/schemas/"
SCHEMA_CONTENT_TYPE = "application/schema+json"


def schema_files() -> dict[str, tuple[str, bytes]]:
    """Every schema at `SCHEMAS_PATH` + its relative path, and at `SCHEMAS_PATH` their index:
    `{"id_base": SCHEMA_BASE, "files": [relative paths]}`."""
    files = {
        f"{SCHEMAS_PATH}{name}": (SCHEMA_CONTENT_TYPE, body) for name, body in SCHEMA_FILES.items()
    }
    index = {"id_base": SCHEMA_BASE, "files": sorted(SCHEMA_FILES)}
    files[SCHEMAS_PATH] = ("application/json", orjson.dumps(index, option=orjson.OPT_INDENT_2))
    return files


class StaticFiles:
    """Files by URL path, answered with their `ETag` and the CORS fields `allowed_origins` give."""

    def __init__(
        self, files: Mapping[str, tuple[str, bytes]], allowed_origins: tuple[str, ...]
    ) -> None:
        self._files = {
            path: (content_type, body, _etag(body)) for path, (content_type, body) in files.items()
        }
        self._allowed = frozenset(allowed_origins)

    def respond(self, path: str, headers: Headers) -> HttpResponse | None:
        """The file at `path`, or None if there is none."""
        found = self._files.get(path)
        if found is None:
            return None
        content_type, body, etag = found
        fields = [("Content-Type", content_type), ("Cache-Control", "no-cache"), ("ETag", etag)]
        return 200, [*fields, *self._cors(headers)], body

    def _cors(self, headers: Headers) -> list[tuple[str, str]]:
        if not self._allowed:
            return [("Access-Control-Allow-Origin", "*")]
        try:
            origin = headers.get("Origin")
        except MultipleValuesError:  # not from a browser (RFC 6454 §7.3): named in none
            origin = None
        if origin in self._allowed:
            return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
        return [("Vary", "Origin")]


def _etag(body: bytes) -> str:
    """A strong validator: a digest of the bytes, the same in every process serving them."""
    digest = hashlib.sha256(body).digest()[:16]
    return f'"{base64.urlsafe_b64encode(digest).decode().rstrip("=")}"'
