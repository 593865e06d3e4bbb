"""The issuer's public keys, fetched without blocking the server (CONTRACT §2.3).

:class:`JwksKeys` fetches the JWKS document from the one address the settings name — never one a
token names — with httpx on Trio:

* at start, waiting at most START_WAIT_S for it (the server starts either way and verifies as soon
  as the keys arrive; until then a token answers 503 ``backend_unavailable``);
* again every REFRESH_S in the background (RETRY_S after a failure);
* again when a token names a ``kid`` it does not know, at most once every REFETCH_MIN_S whatever
  the number of such tokens: a flood of forged ``kid``\\s costs one request per REFETCH_MIN_S;
* each fetch bounded: FETCH_TIMEOUT_S in all (a server that trickles its answer is cut off), at
  most MAX_BODY_BYTES read, no redirect followed.

A fetch that fails, or finds no usable key, keeps the last good keys: an issuer that is down does
not log its operators out. The keys are held by (JWKS URL, kid), so keys of one address never
answer for another.

Error handling: a failed fetch is one warning line (its kind, not its address) and a counter
(``failures``); nothing here raises to its caller but cancellation.
"""

from __future__ import annotations

import logging
import math

import httpx
import jwt
import trio

from .tokens import parse_jwks

log = logging.getLogger("atom_actors.operators")

START_WAIT_S = 3.0
REFRESH_S = 600.0
RETRY_S = 30.0
REFETCH_MIN_S = 30.0
FETCH_TIMEOUT_S = 5.0
MAX_BODY_BYTES = 256 * 1024


class JwksKeys:
    """The public keys at ``url``: :meth:`run` keeps them fresh, :meth:`known` reads them,
    :meth:`refetch` asks for them again (rate-limited)."""

    def __init__(self, url: str, *, refresh_s: float = REFRESH_S,
                 refetch_min_s: float = REFETCH_MIN_S, timeout_s: float = FETCH_TIMEOUT_S,
                 max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.url = url
        self.refresh_s = refresh_s
        self.refetch_min_s = refetch_min_s
        self.timeout_s = timeout_s
        self.max_body_bytes = max_body_bytes
        self.fetches = 0            # requests made
        self.failures = 0           # requests that brought no usable key
        self.fetched_at = -math.inf  # Trio time of the last good fetch
        self._keys: dict[tuple[str, str], jwt.PyJWK] = {}
        self._attempted_at = -math.inf
        self._fetching = trio.Lock()
        self._client: httpx.AsyncClient | None = None

    @property
    def ever_fetched(self) -> bool:
        return self.fetched_at > -math.inf

    def known(self) -> dict[str, jwt.PyJWK]:
        """The keys of this URL, by kid."""
        return {kid: key for (url, kid), key in self._keys.items() if url == self.url}

    async def run(self, *, task_status: trio.TaskStatus[JwksKeys] = trio.TASK_STATUS_IGNORED) -> None:
        """Fetch the keys, then keep them fresh until cancelled. Started once the first fetch
        ended or START_WAIT_S passed, whichever is first."""
        async with httpx.AsyncClient(follow_redirects=False, trust_env=False,
                                     headers={"Accept": "application/json",
                                              # raw bytes are what is bounded: no decompression
                                              "Accept-Encoding": "identity"}) as client:
            self._client = client
            try:
                async with trio.open_nursery() as nursery:
                    first = trio.Event()

                    async def first_fetch() -> None:
                        try:
                            await self._fetch()
                        finally:
                            first.set()

                    nursery.start_soon(first_fetch)
                    with trio.move_on_after(START_WAIT_S):
                        await first.wait()
                    task_status.started(self)
                    await first.wait()
                    while True:
                        await trio.sleep(self.refresh_s if self.ever_fetched
                                         and trio.current_time() - self.fetched_at < self.refresh_s
                                         else RETRY_S)
                        await self._fetch()
            finally:
                self._client = None

    async def refetch(self) -> None:
        """Fetch again now (a token named an unknown kid), unless a fetch was made within
        REFETCH_MIN_S; a fetch under way is waited for, not repeated."""
        if self._fetching.locked():
            async with self._fetching:
                return
        if trio.current_time() - self._attempted_at < self.refetch_min_s:
            return
        await self._fetch()

    async def _fetch(self) -> None:
        async with self._fetching:
            if self._client is None:
                return
            self._attempted_at = trio.current_time()
            self.fetches += 1
            why = None
            with trio.move_on_after(self.timeout_s) as bounded:
                try:
                    keys = parse_jwks(await self._get(self._client))
                    if keys:
                        self._keys = {(self.url, kid): key for kid, key in keys.items()}
                        self.fetched_at = trio.current_time()
                        return
                    why = "it holds no signing key this server can use"
                except (httpx.HTTPError, ValueError, OSError) as exc:
                    why = str(exc) if isinstance(exc, _Refused) else type(exc).__name__
            if bounded.cancelled_caught:
                why = f"no answer within {self.timeout_s:g} s"
            self.failures += 1
            log.warning("the issuer's keys could not be fetched (%s); %s", why,
                        "the last good keys stay in use" if self._keys else "no keys yet")

    async def _get(self, client: httpx.AsyncClient) -> bytes:
        async with client.stream("GET", self.url, timeout=self.timeout_s) as response:
            if response.status_code != 200:
                raise _Refused(f"HTTP {response.status_code}")
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > self.max_body_bytes:
                raise _Refused(f"the answer is over {self.max_body_bytes} bytes")
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > self.max_body_bytes:
                    raise _Refused(f"the answer is over {self.max_body_bytes} bytes")
            return bytes(body)


class _Refused(ValueError):
    """The issuer answered, but not with a JWKS this server takes."""
