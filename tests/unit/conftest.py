"""Unit tests are of code that needs no network: every one runs with sockets disabled (pytest-socket).

A test that opens a socket, even to 127.0.0.1, fails with SocketBlockedError: it belongs in tests/integration.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_sockets(socket_disabled: None) -> None:
    """pytest-socket's ``socket_disabled`` for every test of this folder (restored after each test)."""
