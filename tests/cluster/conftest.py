"""Fixtures of the cluster tests: the session's Redis (tests/cluster/redis_server.py), a
backend on it under a key prefix of each test's own, so that none sees another's keys, and
`backend`, each backend in turn.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from callbox.cluster.backend import Backend, MemoryBackend
from callbox.cluster.redis_backend import RedisBackend, connect
from tests.cluster.redis_server import RedisServer, unique_prefix


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of the test's own, not the session's: its nodes use the default key prefix,
    and it may stop, freeze or restart it without disturbing other tests."""
    server = RedisServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
async def redis_backend(redis_server: RedisServer) -> AsyncIterator[RedisBackend]:
    """The session's Redis under a key prefix of this test's own."""
    async with connect(redis_server.url, prefix=unique_prefix()) as backend:
        yield backend


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def redis_url_or_none(request: pytest.FixtureRequest) -> str | None:
    """None for MemoryBackend, the session's Redis for RedisBackend (started only if asked)."""
    if request.param == "memory":
        return None
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


@pytest.fixture
async def backend(redis_url_or_none: str | None) -> AsyncIterator[Backend]:
    """Each backend in turn, empty: the contract's cases hold for both."""
    if redis_url_or_none is None:
        yield MemoryBackend()
        return
    async with connect(redis_url_or_none, prefix=unique_prefix()) as redis:
        yield redis
