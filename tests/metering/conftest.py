"""Fixtures of metering's tests."""

from __future__ import annotations

import threading

import pytest


@pytest.fixture
def crashed(monkeypatch: pytest.MonkeyPatch) -> list[threading.ExceptHookArgs]:
    """What ended a thread during the test (`threading.excepthook`'s arguments,
    collected instead of printed): a test of a background thread asserts it stays []."""
    ended: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", ended.append)
    return ended
