"""The schemas at /schemas/, over real HTTP: the very bytes the server validates with, with ETags,
an index, and `$ref`s a client resolves by fetching from the server."""

from __future__ import annotations

import functools
import json
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
import referencing
import referencing.exceptions
import trio

from callbox.codec import SCHEMA_BASE, SCHEMA_FILES, schema_dir
from tests.helpers import http_request, start_server

EXAMPLES = Path(__file__).resolve().parents[2] / "protocol/examples"
VALID, INVALID = EXAMPLES / "valid/client", EXAMPLES / "invalid/client"


def load(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


@pytest.fixture
async def url(nursery: trio.Nursery) -> str:
    return await start_server(nursery)


def http_base(url: str) -> str:
    return url.replace("ws://", "http://").removesuffix("/ws")


async def test_every_schema_file_is_served_byte_for_byte(url: str) -> None:
    on_disk = {
        path.relative_to(schema_dir()).as_posix(): path.read_bytes()
        for path in schema_dir().rglob("*.json")
    }
    assert on_disk == SCHEMA_FILES  # what the validators were built from
    assert len(on_disk) >= 40 and "client/hello.json" in on_disk and "common.json" in on_disk
    for name, body in on_disk.items():
        response = await http_request(url, f"/schemas/{name}")
        assert response.status == 200, name
        assert response.body == body, name
        assert response.fields["content-type"] == "application/schema+json"
        assert response.fields["etag"].startswith('"')


async def test_the_index_lists_every_file_and_the_id_base(url: str) -> None:
    response = await http_request(url, "/schemas/")
    assert response.status == 200
    assert response.fields["content-type"] == "application/json"
    index = json.loads(response.body)
    assert index == {"id_base": SCHEMA_BASE, "files": sorted(SCHEMA_FILES)}
    for name in index["files"]:  # each `$id` is the base and the path
        assert json.loads(SCHEMA_FILES[name])["$id"] == index["id_base"] + name


async def test_an_etag_revalidates_to_304(url: str) -> None:
    first = await http_request(url, "/schemas/client/hello.json")
    etag = first.fields["etag"]
    assert first.fields["cache-control"] == "no-cache"
    for condition in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        again = await http_request(
            url, "/schemas/client/hello.json", headers=[("If-None-Match", condition)]
        )
        assert again.status == 304, condition
        assert again.body == b""
        assert "content-length" not in again.fields  # it would have to be the 200's
        assert "content-type" not in again.fields
        assert again.fields["etag"] == etag
        assert again.fields["cache-control"] == "no-cache"
    changed = await http_request(
        url, "/schemas/client/hello.json", headers=[("If-None-Match", '"stale"')]
    )
    assert (changed.status, changed.body) == (200, first.body)
    other = await http_request(url, "/schemas/common.json")
    assert other.fields["etag"] != etag
    page = await http_request(url, "/callbox.js", headers=[("If-None-Match", etag)])
    assert page.status == 200  # another file's tag


async def test_head_gives_the_length_without_the_body(url: str) -> None:
    response = await http_request(url, "/schemas/common.json", method="HEAD")
    assert response.status == 200
    assert response.body == b""
    assert response.fields["content-length"] == str(len(SCHEMA_FILES["common.json"]))


@pytest.mark.parametrize(
    "path",
    [
        "/schemas/../config.py",
        "/schemas/../../src/callbox/config.py",
        "/schemas/%2e%2e/config.py",
        "/schemas/..%2fconfig.py",
        "/schemas/client/../common.json",
        "/schemas//common.json",
        "/schemas/./common.json",
        "/schemas/common.json/",
        "/schemas",
        "/schemas/client/",
        "/schemas/README.md",
        "/codec.py",
        "/../pyproject.toml",
    ],
)
async def test_no_path_outside_the_list_is_served(url: str, path: str) -> None:
    """Paths are looked up, never joined onto a directory: only the files read at start."""
    response = await http_request(url, path)
    assert response.status == 404, path


async def test_refs_resolve_when_the_schemas_are_fetched_over_http(url: str) -> None:
    """A client that has only the server's URL: it maps the schemas' `$id` base (from the index)
    to /schemas/, and every `$ref` it meets is retrieved from the server."""
    base = http_base(url) + "/schemas/"
    fetched: list[str] = []

    def get(address: str) -> Any:
        with urllib.request.urlopen(address, timeout=10) as response:
            assert response.status == 200
            return orjson.loads(response.read())

    @functools.cache  # a Registry is immutable: what it retrieves, it does not keep
    def retrieve(uri: str) -> referencing.Resource[Any]:
        assert uri.startswith(id_base), uri
        fetched.append(uri.removeprefix(id_base))
        return referencing.Resource.from_contents(get(base + uri.removeprefix(id_base)))

    def validate_all() -> tuple[list[str], list[str]]:
        """Every client example of protocol/examples against the envelope fetched over HTTP:
        the valid ones that fail, the invalid ones that pass."""
        envelope = get(base + "client-message.json")
        registry: referencing.Registry[Any] = referencing.Registry(retrieve=retrieve)
        validator = jsonschema.Draft202012Validator(envelope, registry=registry)
        return (
            [p.name for p in sorted(VALID.glob("*.json")) if not validator.is_valid(load(p))],
            [p.name for p in sorted(INVALID.glob("*.json")) if validator.is_valid(load(p))],
        )

    id_base = (await trio.to_thread.run_sync(get, base))["id_base"]
    assert id_base == SCHEMA_BASE
    # In a thread: the client blocks on HTTP while this thread's trio loop runs the server.
    wrongly_refused, wrongly_accepted = await trio.to_thread.run_sync(validate_all)
    assert wrongly_refused == [] and wrongly_accepted == []
    client_files = {name for name in SCHEMA_FILES if name.startswith("client/")}
    assert sorted(fetched) == sorted(client_files | {"common.json"})  # each once, when first met


async def test_an_unmapped_ref_is_not_resolved_offline() -> None:
    """The check above is not vacuous: without retrieval, the envelope's `$ref`s do not resolve."""
    envelope = orjson.loads(SCHEMA_FILES["client-message.json"])
    validator = jsonschema.Draft202012Validator(envelope, registry=referencing.Registry())
    with pytest.raises(referencing.exceptions.Unresolvable):
        validator.is_valid({"type": "hello", "user_id": "alice"})
