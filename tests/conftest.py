"""Fixtures every test directory may use (pytest-trio provides `nursery` and `autojump_clock`),
and the options `--inject-misses` and `--cluster` of the core tests."""

from __future__ import annotations

import pytest
import trio

from tests.core.harness import Harness
from tests.helpers import start_server


@pytest.fixture
async def url(nursery: trio.Nursery) -> str:
    """The URL of a server with the default configuration, running for the test."""
    return await start_server(nursery)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--inject-misses",
        action="store_true",
        help="core tests: run every event again after a Missing at each of its lookups in turn, "
        "checking that each miss left nothing behind and that the event finally did what it "
        "does with nothing missing (tests/core/harness.py)",
    )

    parser.addoption(
        "--cluster",
        action="store_true",
        help="core tests: run each as a cluster of three nodes over the in-memory shared store, "
        "every connection on a node of its own in turn (tests/cluster/harness.py)",
    )


def pytest_configure(config: pytest.Config) -> None:
    Harness.inject_misses = bool(config.getoption("--inject-misses"))
    Harness.cluster = bool(config.getoption("--cluster"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--cluster"):
        return
    for item in items:
        marker = item.get_closest_marker("single_process")
        if marker is not None:
            item.add_marker(pytest.mark.skip(reason=f"single process only: {marker.args[0]}"))
