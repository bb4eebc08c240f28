"""What policy knows yet, and so whether it may answer (issue 14, items 1 and 2).

A replica answers from memory: its limits and directory, every user's totals read
from the totals topic, approvals installed from the requests topic. Until each part
is known (or after one was found untrustworthy: a recreated totals topic), an answer
would be made from state it doesn't have, e.g. ALLOW with used_micros=0 for a user far
over budget. So every RPC that answers from memory asks `ready` first (one attribute
read on the hot path) and, when it is False, ends the call UNAVAILABLE with `message()`
(the caller's fail mode decides); health follows the same flag.

Parts are named ("limits", "totals", "approvals"); each is either waiting (with a
function that says for what, called only when someone asks) or broken (a fault that
takes an operator: it stays until `clear`). Thread-safe: the Kafka consumers report
from their own threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

Describe = Callable[[], str]


class Readiness:
    """Parts policy is waiting for or has found broken; `ready` when there is none
    (so a new one is ready until a part says it waits: register parts first).

    `on_change()` is called (from whichever thread changed it, with no lock held)
    every time `ready` flips; it must only hand the news over, e.g. to an event loop.
    """

    def __init__(self, on_change: Callable[[], object] = lambda: None) -> None:
        self.ready = True  # nothing waited for yet
        self._on_change = on_change
        self._lock = threading.Lock()
        self._waiting: dict[str, Describe] = {}
        self._broken: dict[str, str] = {}

    def waiting(self, part: str, describe: Describe) -> None:
        """`part` is not known yet; `describe()` says how far it got (e.g. "1,200
        of 3,400 records read")."""
        with self._lock:
            self._waiting[part] = describe
        self._settle()

    def known(self, part: str) -> None:
        """`part` is known now (a broken part stays broken until `clear`)."""
        with self._lock:
            self._waiting.pop(part, None)
        self._settle()

    def broken(self, part: str, problem: str) -> None:
        """`part` can't be trusted: `problem` says what happened and what to do."""
        with self._lock:
            self._broken[part] = problem
        self._settle()

    def clear(self, part: str) -> None:
        """Forget that `part` was broken (it is being read again, or was restored)."""
        with self._lock:
            self._broken.pop(part, None)
        self._settle()

    def message(self) -> str:
        """Why policy isn't ready, every part named: "policy is not ready: totals:
        1,200 of 3,400 records read; approvals: reading qm.requests.v1" ("" when ready)."""
        with self._lock:
            broken = [f"{part}: {problem}" for part, problem in self._broken.items()]
            waiting = list(self._waiting.items())
        reasons = broken + [f"{part}: {describe()}" for part, describe in waiting]
        return f"policy is not ready: {'; '.join(reasons)}" if reasons else ""

    def _settle(self) -> None:
        with self._lock:
            now = not self._waiting and not self._broken
            flipped = now != self.ready
            self.ready = now
        if flipped:
            self._on_change()
