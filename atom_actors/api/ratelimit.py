"""Token buckets for session creation: one per client address, and one for everyone together
(pure: every call takes ``now``).

Each address has a bucket of ``burst`` tokens refilled at one token per ``refill_s`` seconds; a
session creation takes one. The buckets live only in this process's memory — never logged,
never stored — and at most ``max_keys`` of them: beyond that the least recently used is forgotten
(which can only let that address in sooner, never lock anyone out).

Many addresses (200 opened 2,000 sessions in 5 s: issue 24) are held by the global bucket of
:class:`SessionLimits`, taken only once the address's own bucket has granted: an address refused
on its own costs the others nothing.
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


GLOBAL_KEY = ""


class SessionLimits:
    """The address's bucket, then the global one (SESSION_GLOBAL_BURST, SESSION_GLOBAL_PER_S)."""

    def __init__(self, global_burst: int, global_per_s: float, *, burst: int = SESSION_BURST,
                 refill_s: float = SESSION_REFILL_S) -> None:
        self.per_address = TokenBuckets(burst, refill_s)
        self.everyone = TokenBuckets(global_burst, 1.0 / global_per_s, max_keys=1)

    def take(self, address: str, now: float) -> float:
        """Take a token for a session from ``address``: 0.0 when granted, else the seconds to wait."""
        wait = self.per_address.take(address, now)
        return wait if wait > 0 else self.everyone.take(GLOBAL_KEY, now)
