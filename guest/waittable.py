"""Sleepers by token, with the wake-before-wait placeholder and wake-all.

A page-ready can reach the guest before its task has gone to sleep (another vCPU took the
interrupt first). `wake()` that finds no sleeper leaves a placeholder, and the later `park()`
consumes it and does not sleep. Tokens carry the vCPU id in their low 12 bits, so wake-all for
one vCPU wakes exactly the sleepers (and drops the placeholders) of that vCPU's tokens.
"""
from __future__ import annotations

import threading
from collections import deque
from enum import Enum
from typing import Generic, TypeVar

T = TypeVar("T")
TOKEN_VCPU_MASK = 0xFFF
RECENT_TOKENS = 4096      # resolved tokens remembered, to tell a duplicate page-ready from an early one


class _Placeholder:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<wake before wait>"


PLACEHOLDER = _Placeholder()


class Wake(Enum):
    """What `WaitTable.wake()` did with a token."""
    WOKEN = "woken"            # its sleeper woke
    EARLY = "early"            # nobody slept on it yet: a placeholder waits for the park
    DUPLICATE = "duplicate"    # it was resolved already (or already has a placeholder): nothing


class WaitTable(Generic[T]):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[int, object] = {}
        self.placeholders_consumed = 0
        self.placeholders_left = 0
        self.duplicates = 0
        self._recent: deque[int] = deque(maxlen=RECENT_TOKENS)
        self._recent_set: set[int] = set()

    def park(self, token: int, sleeper: T) -> bool:
        """Sleep `sleeper` on `token`; False (do not sleep) if the wake already came."""
        with self._lock:
            entry = self._entries.get(token)
            if entry is PLACEHOLDER:
                del self._entries[token]
                self.placeholders_consumed += 1
                self._remember(token)
                return False
            if entry is not None:
                raise RuntimeError(f"token {token:#x} already has a sleeper")
            self._entries[token] = sleeper
            return True

    def wake(self, token: int) -> tuple[Wake, T | None]:
        """Wake the sleeper of `token` (returned with WOKEN), or leave a placeholder if it has not
        slept yet (EARLY). A token that was resolved recently, or that has a placeholder already,
        is a DUPLICATE: counted, and it wakes nobody."""
        with self._lock:
            entry = self._entries.pop(token, None)
            if entry is None and token in self._recent_set:
                self.duplicates += 1
                return Wake.DUPLICATE, None
            if entry is None:
                self._entries[token] = PLACEHOLDER
                self.placeholders_left += 1
                return Wake.EARLY, None
            if entry is PLACEHOLDER:
                self._entries[token] = PLACEHOLDER   # a second wake for a token nobody waits on
                self.duplicates += 1
                return Wake.DUPLICATE, None
            self._remember(token)
            return Wake.WOKEN, entry  # type: ignore[return-value]

    def _remember(self, token: int) -> None:
        if len(self._recent) == RECENT_TOKENS:
            self._recent_set.discard(self._recent[0])
        self._recent.append(token)
        self._recent_set.add(token)

    def wake_all(self, vcpu: int) -> list[tuple[int, T]]:
        """Wake every sleeper of `vcpu`'s tokens and drop its placeholders; return the
        (token, sleeper) pairs woken."""
        with self._lock:
            mine = [t for t in self._entries if t & TOKEN_VCPU_MASK == vcpu]
            entries = [(t, self._entries.pop(t)) for t in mine]
            for token in mine:
                self._remember(token)
        return [(t, e) for t, e in entries if e is not PLACEHOLDER]  # type: ignore[misc]

    def sleepers(self) -> dict[int, T]:
        with self._lock:
            return {t: e for t, e in self._entries.items() if e is not PLACEHOLDER}  # type: ignore[misc]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
