"""Pacing calls at Feishu's rate limits: in one process, or shared by every worker through the ledger.

Standard library only. The client takes any :class:`Pace`; the hook chooses which.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol


class Pace(Protocol):
    """Anything that waits until the next call may go: :class:`RateLimiter` in one process, or
    the ledger's ``SharedPace`` across processes and machines."""

    def acquire(self) -> None: ...


def pace_interval(limit: float, period: float) -> float:
    """Seconds between calls so that any ``limit`` consecutive ones span more than ``period``.

    The span is stretched by a slack of 1% of the period but at least 50 ms: the jitter
    between leaving here and arriving there would otherwise let a late call and an
    on-time one land in the same window.
    """
    if limit <= 0 or period <= 0:
        raise ValueError("a rate limit needs a positive number of calls per positive period")
    return (period + max(period * 0.01, 0.05)) / limit


class RateLimiter:
    """Spaces calls evenly so that any ``limit`` consecutive calls span more than ``period`` seconds.

    Pacing evenly (rather than bursting a window's worth, then waiting) keeps us under
    Feishu's limit whether its gateway counts in fixed or sliding windows (see
    :func:`pace_interval`). Shared by every thread that holds it.
    """

    def __init__(self, limit: float, period: float) -> None:
        self.interval = pace_interval(limit, period)
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


class SharedPace:
    """Feishu's rate limit for one app and tenant, kept in a database every worker shares.

    Each process's own limiter only sees its own calls: mapped withdrawals on several
    workers, a retry beside its orphan, two batches, would together exceed Feishu's
    limit and draw 429s. Here every call reserves the next slot of one shared row
    (``reserve_wait`` is the ledger's :meth:`~airflow_provider_feishu_hire.ledger.Ledger.reserve_wait`),
    spaced as :func:`pace_interval` says, and waits as long as the database's clock says:
    the workers' own clocks play no part.
    """

    def __init__(self, reserve_wait: Callable[[str, float], float], pace_key: str, limit: float, period: float) -> None:
        self._reserve_wait = reserve_wait
        self.pace_key = pace_key
        self.interval = pace_interval(limit, period)

    def acquire(self) -> None:
        delay = self._reserve_wait(self.pace_key, self.interval)
        if delay > 0:
            time.sleep(delay)
