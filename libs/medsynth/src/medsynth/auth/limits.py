"""Request limits: token buckets per caller, kept in the service process (each replica limits on its own).

The guard keeps one :class:`RateLimiter` per route class (:class:`medsynth.auth.policy.RateClass`:
interactive calls, uploads) and two for the per-minute upload quotas (per key, per project)."""

from __future__ import annotations

import threading
import time

MAX_BUCKETS = 10_000  # callers remembered at once; full buckets are forgotten first


class RateLimiter:
    """``rate`` tokens per second refill each caller's bucket of ``burst`` tokens; a request takes one."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = float(rate), float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # caller → (tokens, at)
        self._lock = threading.Lock()

    def take(self, caller: str, now: float | None = None) -> float:
        """0 when the request may go on, else the seconds until the caller's next token."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, at = self._buckets.get(caller, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens < 1.0:
                self._buckets[caller] = (tokens, now)
                return (1.0 - tokens) / self.rate
            self._buckets[caller] = (tokens - 1.0, now)
            if len(self._buckets) > MAX_BUCKETS:
                self._forget_full(now)
            return 0.0

    def _forget_full(self, now: float) -> None:
        for caller, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * self.rate >= self.burst:
                del self._buckets[caller]
