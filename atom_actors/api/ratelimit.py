"""Token buckets per client address, for session creation (pure: every call takes ``now``).

Each address has a bucket of ``burst`` tokens refilled at one token per ``refill_s`` seconds; a
session creation takes one. The buckets live only in this process's memory — never logged,
never stored — and at most ``max_keys`` of them: beyond that the least recently used is forgotten
(which can only let that address in sooner, never lock anyone out).
"""

from __future__ import annotations

from collections import OrderedDict

SESSION_BURST = 10          # sessions one address may open at once ...
SESSION_REFILL_S = 6.0      # ... then one more every this many seconds (10 a minute)
MAX_ADDRESSES = 10_000


class TokenBuckets:
    def __init__(self, burst: int = SESSION_BURST, refill_s: float = SESSION_REFILL_S, *,
                 max_keys: int = MAX_ADDRESSES) -> None:
        self.burst = float(burst)
        self.refill_s = refill_s
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key → (tokens, at)

    def take(self, key: str, now: float) -> float:
        """Take a token for ``key``: 0.0 when granted, else the seconds until one is available."""
        tokens, at = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(now - at, 0.0) / self.refill_s)
        if tokens >= 1.0:
            self._keep(key, tokens - 1.0, now)
            return 0.0
        self._keep(key, tokens, now)
        return (1.0 - tokens) * self.refill_s

    def __len__(self) -> int:
        return len(self._buckets)

    def _keep(self, key: str, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
