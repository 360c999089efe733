"""What only the Redis backend has: connecting (URLs, start-up checks, one-line refusals), the
instance id, the cluster clock, Redis out of reach or out of memory.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from callbox.cluster.backend import ABSENT, ClusterUnavailable, Transaction
from callbox.cluster.redis_backend import BadRedis, RedisBackend, connect
from tests.cluster.redis_server import RedisServer, needs_redis_server, unique_prefix
from tests.cluster.test_backend_contract import CommittedAs

pytestmark = pytest.mark.redis


def one_line(error: BaseException) -> str:
    message = str(error)
    assert message and "\n" not in message, message
    return message


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param([], id="config"),
        # Managed Redis often disables CONFIG: INFO says the policy too.
        pytest.param(["--rename-command", "CONFIG", ""], id="info"),
    ],
)
@needs_redis_server
async def test_a_redis_that_evicts_is_refused(tmp_path: Path, settings: list[str]) -> None:
    server = RedisServer(tmp_path, "--maxmemory-policy", "allkeys-lru", *settings)
    try:
        with pytest.raises(BadRedis) as refused:
            async with connect(server.url):
                pytest.fail("connected")
    finally:
        server.stop()
    assert one_line(refused.value) == (
        f"Redis at {server.url} has maxmemory-policy allkeys-lru: callbox needs noeviction "
        "(evicted records and outboxes would be lost silently)"
    )


async def test_a_redis_too_old_is_refused(
    redis_backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def info(section: str) -> dict[str, str]:
        return {"redis_version": "6.2.14"}

    monkeypatch.setattr(redis_backend.client, "info", info)
    with pytest.raises(BadRedis) as refused:
        await redis_backend.check()
    assert one_line(refused.value).endswith("runs Redis 6.2.14: callbox needs 7.0 or newer")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:6379",
        "redis://",
        "redis://127.0.0.1:port/0",
        "redis://127.0.0.1:6379/zero",
        "unix://relative/path.sock",
        "unix:///tmp/redis.sock?db=one",
        "127.0.0.1:6379",
    ],
)
async def test_a_url_that_names_no_redis_is_one_line(url: str) -> None:
    with pytest.raises(BadRedis) as refused:
        async with connect(url):
            pytest.fail("connected")
    assert one_line(refused.value).startswith(f"not a Redis URL: {url!r}")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:secret@127.0.0.1:6379/0", "http://127.0.0.1:6379/0"),
        ("redis://127.0.0.1/0?password=secret&db=x", "redis://127.0.0.1/0"),
    ],
)
async def test_a_refused_url_is_shown_without_its_password(url: str, shown: str) -> None:
    with pytest.raises(BadRedis) as refused:
        async with connect(url):
            pytest.fail("connected")
    assert one_line(refused.value).startswith(f"not a Redis URL: {shown!r}")
    assert "secret" not in str(refused.value)


@needs_redis_server
async def test_a_redis_out_of_reach_is_one_line(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.stop()
    with pytest.raises(ClusterUnavailable) as unreachable:
        async with connect(server.url):
            pytest.fail("connected")
    assert one_line(unreachable.value).startswith(f"cannot reach Redis at {server.url}: ")


async def test_a_unix_socket_and_its_database(redis_server: RedisServer) -> None:
    prefix = unique_prefix()
    async with connect(redis_server.unix_url, prefix=prefix) as backend:
        await backend.commit("b", [Transaction({}, writes={"k": b"v"})])
    async with connect(redis_server.url, prefix=prefix) as other_database:
        assert (await other_database.load(["k"]))["k"].data is None
    async with connect(redis_server.unix_url, prefix=prefix) as backend:
        assert (await backend.load(["k"]))["k"].data == b"v"


async def test_what_the_block_raises_comes_out_as_itself(redis_server: RedisServer) -> None:
    with pytest.raises(KeyError):
        async with connect(redis_server.url):
            raise KeyError("mine")


async def test_the_instance_id_changes_only_when_redis_lost_it(redis_server: RedisServer) -> None:
    prefix = unique_prefix()
    async with connect(redis_server.url, prefix=prefix) as first:
        instance = await first.instance()
        async with connect(redis_server.url, prefix=prefix) as second:
            assert await second.instance() == instance
        await first.client.delete([f"{prefix}instance"])  # as a restart without persistence
        again = await first.instance()
        assert again != instance
        assert await first.instance() == again


async def test_scripts_redis_forgot_are_loaded_again(redis_backend: RedisBackend) -> None:
    await redis_backend.client.script_flush()  # as a restarted Redis has none
    assert await redis_backend.commit("b", [Transaction({})]) == [CommittedAs(1, ())]
    assert await redis_backend.load(["k"]) == {"k": ABSENT}


async def test_the_cluster_clock_is_redis_time_in_milliseconds(
    redis_backend: RedisBackend,
) -> None:
    before = time.time_ns() // 1_000_000
    now = await redis_backend.now_ms()
    after = time.time_ns() // 1_000_000
    assert before - 1 <= now <= after + 1  # the same machine's clock, to the millisecond
    assert await redis_backend.now_ms() >= now


@needs_redis_server
async def test_every_operation_on_a_redis_gone_is_cluster_unavailable(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    try:
        async with connect(server.url) as backend:
            server.stop()
            operations = [
                backend.load(["k"]),
                backend.outboxes(["s"]),
                backend.commit("b", [Transaction({})]),
                backend.frames_after("s", 0, 1),
                backend.now_ms(),
                backend.instance(),
            ]
            for operation in operations:
                with pytest.raises(ClusterUnavailable) as unavailable:
                    await operation
                assert one_line(unavailable.value).startswith(
                    f"cannot reach Redis at {server.url}: "
                )
    finally:
        server.stop()


@needs_redis_server
async def test_a_redis_out_of_memory_refuses_a_commit_whole(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, "--maxmemory", "4mb")
    try:
        async with connect(server.url) as backend:
            for n in range(100):  # 100 KB a commit: Redis is full long before the last
                big = Transaction({}, writes={f"k{n}-{i}": b"x" * 10_000 for i in range(10)})
                try:
                    await backend.commit(f"b{n}", [big])
                except ClusterUnavailable as refused:
                    assert one_line(refused).startswith(f"Redis at {server.url} refused: OOM ")
                    break
            else:
                pytest.fail("Redis took 10 MB under a 4 MB maxmemory")
            assert n > 0
            left = await backend.load(list(big.writes))
            assert set(left.values()) == {ABSENT}
    finally:
        server.stop()
