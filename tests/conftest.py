"""Fixtures every test directory may use (pytest-trio provides `nursery` and `autojump_clock`)."""

from __future__ import annotations

import pytest
import trio

from tests.helpers import start_server


@pytest.fixture
async def url(nursery: trio.Nursery) -> str:
    """The URL of a server with the default configuration, running for the test."""
    return await start_server(nursery)
