"""The Redis coordinator (REDIS_URL=redis://…): ``redis.asyncio``, bridged into Trio.

What it keeps, under a namespace (``atom`` unless told otherwise)::

    atom:commands           stream    API processes' commands; consumer group ``engine``
    atom:engine:lease       key       which engine process leads (token, expiring)
    atom:engine:epoch       key       the newest fencing epoch handed out (only grows)
    atom:engine:checkpoint:epoch key  the epoch of the leader that wrote the last checkpoint
    atom:engine:checkpoint  key       the leader's whole swarm state, for the next leader
    atom:engine:applied     zset      command ids applied in the last hour (idempotence)
    atom:engine:log         list      the last 10,000 applied command ids, in order
    atom:summary            key       statuses + frequencies of every agent (the last one), and
                            pub/sub   each new one, twice a second, to the processes without it
    atom:session:<sha256>   hash      a Sceau session: created, expires, frequency, revoked;
                                      expiring with it (PEXPIREAT)
    atom:sessions:revoked   pub/sub   the id of each session revoked
    atom:safeguard          hash      the Brise-Circuit's state (JSON) and its version
    atom:subscribers:<id>   key       a ws process's subscriber count, expiring
    atom:probe:<instance>   key       an API process's readiness write, expiring
    atom:idempotency:<id>   hash      an Idempotency-Key's record (its id: a hash of the caller's
                                      scope and the key): fingerprint, command id, held until,
                                      the answer; expiring 10 minutes after it was made
    atom:audit:head         hash      the audit chain's newest link: record id, link (CONTRACT
                                      §2.4; cutting off the newest records is found with it)

Atomic steps are Lua scripts: the checkpoint (state + acknowledgements + applied ids + summary +
the applied commands' events, published on the bus's ``atom:events`` channel in one batch; only
while the caller holds the lease and no newer epoch exists), the lease's acquisition (with its
epoch), renewal and release, a revocation (flag + publish), and the Brise-Circuit's
compare-and-swap, and an Idempotency-Key record's claim, answer and release (holds timed by
Redis's own clock, the same for every API process), and the audit head's advance.

The lease's epoch is confirmed by the replicas: the acquisition and a ``WAIT`` for every replica
the primary has (``ROLE``) go in one pipeline, on one connection, and a lease no replica confirmed
within WAIT_MS is given back (no replica would know the epoch: once promoted, it could hand it
out again). A primary with no replica has nothing to wait for.

Every call is bounded: a refused, dropped or silent connection raises
:class:`~atom_actors.errors.BackendUnavailable` at once or within ``timeout_s``, never a hang.
The subscription (summaries, revocations) reconnects every RETRY_S; each time it is made again
the revocation readers get a RESYNC, since revocations published meanwhile were missed.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import redis.exceptions
import trio

from ..bus.redis import event_batch
from ..errors import BackendUnavailable, CommandUnconfirmed
from ..redislink import OnRedis, RedisLink
from ..store import SessionRecord
from .base import RESYNC, Claim, Coordinator, Entry

log = logging.getLogger("atom_actors.coordinator")

TIMEOUT_S = 1.0           # socket timeout of every call; connecting gets half of it
WAIT_MS = 500             # how long an epoch's acquisition waits for the replicas to confirm it
ACK_TIMEOUT_S = 0.5       # WAIT's own bound on replicas' acknowledgements (within TIMEOUT_S)
RETRY_S = 0.2             # after a failure, the subscription tries again this soon
GROUP = "engine"
APPLIED_KEEP_MS = 3_600_000
LOG_KEEP = 10_000

# Stores the state the leader produced, acknowledges and records the commands it applied, and
# publishes the summary: all or nothing, and only while the caller still holds the lease (a lease
# that vanished, as in a Redis restart, is taken back as a renewal would).
_CHECKPOINT = """
local epoch = tonumber(redis.call('GET', KEYS[7]) or '0')
local mine = tonumber(ARGV[7])
if epoch > mine then return 0 end
local holder = redis.call('GET', KEYS[1])
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[6])
elseif holder ~= ARGV[1] then return 0 end
if epoch < mine then redis.call('SET', KEYS[7], mine) end
redis.call('SET', KEYS[8], mine)
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], ARGV[3])
for i = 9, #ARGV, 2 do
  redis.call('XACK', KEYS[4], ARGV[5], ARGV[i])
  redis.call('XDEL', KEYS[4], ARGV[i])
  if ARGV[i + 1] ~= '' then
    redis.call('ZADD', KEYS[5], ARGV[4], ARGV[i + 1])
    redis.call('RPUSH', KEYS[6], ARGV[i + 1])
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', tonumber(ARGV[4]) - %d)
redis.call('LTRIM', KEYS[6], -%d, -1)
redis.call('PUBLISH', KEYS[3], ARGV[3])
if ARGV[8] ~= '' then redis.call('PUBLISH', KEYS[9], ARGV[8]) end
return 1
""" % (APPLIED_KEEP_MS, LOG_KEEP)

# The lease, if free, with an epoch above every one seen: the last handed out, the last
# checkpoint's (a Redis that lost the counter but kept the checkpoint) and the caller's own.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local epoch = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'),
                       tonumber(redis.call('GET', KEYS[3]) or '0'), tonumber(ARGV[3])) + 1
redis.call('SET', KEYS[2], epoch)
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return epoch
"""

# 1: renewed; 2: the key had gone (Redis restarted) and is ours again; 0: another holder, or
# a newer epoch exists (a lease handed out meanwhile, even one whose key is gone since).
_RENEW = """
local epoch = tonumber(redis.call('GET', KEYS[2]) or '0')
local mine = tonumber(ARGV[3])
if epoch > mine then return 0 end
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  if epoch < mine then redis.call('SET', KEYS[2], mine) end
  return 2
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# A revocation: flag the session (if it is still there) and tell every process.
_REVOKE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'revoked', '1')
redis.call('PUBLISH', KEYS[2], ARGV[1])
return 1
"""

# The Brise-Circuit's compare-and-swap: write version ARGV[1] + 1 only over version ARGV[1].
_SWAP = """
local version = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if version ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'version', version + 1, 'state', ARGV[2])
return 1
"""

# The audit chain's head moves forward only: a process that reports its record after another
# process reported a newer one leaves the newer one in place.
_ADVANCE = """
local current = tonumber(redis.call('HGET', KEYS[1], 'id') or '0')
if current >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'link', ARGV[2])
return 1
"""


# An Idempotency-Key record: claim (ARGV: fingerprint, command id, ttl ms, hold ms). Replies
# {state, command id, status, body}; the states are base.RUN, MISMATCH, REPLAY and BUSY.
_IDEM_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local r = redis.call('HMGET', KEYS[1], 'fp', 'cid', 'hold', 'status', 'body')
if not r[1] then
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'cid', ARGV[2], 'hold', now + tonumber(ARGV[4]))
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {'run', ARGV[2]}
end
if r[1] ~= ARGV[1] then return {'mismatch', ''} end
if r[4] then return {'replay', r[2], r[4], r[5]} end
if tonumber(r[3]) > now then return {'busy', r[2]} end
redis.call('HSET', KEYS[1], 'hold', now + tonumber(ARGV[4]))
return {'run', r[2]}
"""

# Keep an answer unless one is kept (ARGV: fingerprint, command id, status, body, ttl ms).
_IDEM_ANSWER = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'cid', ARGV[2], 'hold', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
if not redis.call('HGET', KEYS[1], 'status') then
  redis.call('HSET', KEYS[1], 'status', ARGV[3], 'body', ARGV[4])
end
return redis.call('HMGET', KEYS[1], 'cid', 'status', 'body')
"""

_IDEM_RELEASE = """
if redis.call('HEXISTS', KEYS[1], 'status') == 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'hold', 0)
end
return 1
"""


class Keys:
    def __init__(self, namespace: str) -> None:
        self.idempotency = f"{namespace}:idempotency:"  # + the record's id
        self.summary = f"{namespace}:summary"
        self.commands = f"{namespace}:commands"
        self.lease = f"{namespace}:engine:lease"
        self.epoch = f"{namespace}:engine:epoch"
        self.checkpoint_epoch = f"{namespace}:engine:checkpoint:epoch"
        self.events = f"{namespace}:events"            # the bus's events channel
        self.checkpoint = f"{namespace}:engine:checkpoint"
        self.applied = f"{namespace}:engine:applied"
        self.log = f"{namespace}:engine:log"
        self.session = f"{namespace}:session:"         # + the session id (its token's sha256)
        self.revoked = f"{namespace}:sessions:revoked"
        self.safeguard = f"{namespace}:safeguard"
        self.subscribers = f"{namespace}:subscribers:"  # + a ws process's id
        self.audit_head = f"{namespace}:audit:head"
        self.probe = f"{namespace}:probe:"              # + a process's instance: readiness


class RedisCoordinator(OnRedis, Coordinator):
    """The :class:`~atom_actors.coordinator.base.Coordinator` on Redis.

    ``summaries`` / ``revocations``: whether this process subscribes to them (a process without
    the engine mirrors the summaries; a ws process watches revocations). ``min_acks``
    (REDIS_MIN_ACKS): replicas that must acknowledge a command's entry before
    :meth:`add_command` returns.
    """

    name = "redis"

    def __init__(self, url: str, *, namespace: str = "atom", summaries: bool = True,
                 revocations: bool = True, timeout_s: float = TIMEOUT_S,
                 min_acks: int = 0) -> None:
        super().__init__()
        self.url = url
        self.keys = Keys(namespace)
        self.timeout_s = timeout_s
        self.min_acks = min_acks
        self.ack_timeout_s = min(ACK_TIMEOUT_S, timeout_s / 2)
        self.instance = uuid.uuid4().hex[:12]
        self._channels = [k for k, on in ((self.keys.summary, summaries),
                                          (self.keys.revoked, revocations)) if on]
        self.link = RedisLink(url, name="coordinator", timeout_s=timeout_s, log=log,
                              scripts={"checkpoint": _CHECKPOINT, "acquire": _ACQUIRE, "renew": _RENEW,
                                       "release": _RELEASE, "revoke": _REVOKE, "swap": _SWAP,
                                       "idem_claim": _IDEM_CLAIM, "idem_answer": _IDEM_ANSWER,
                                       "idem_release": _IDEM_RELEASE, "advance": _ADVANCE})
        self.subscribed = trio.Event()     # set each time the subscription is (re)established
        self._subscriptions = 0

    # -- running ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Coordinator] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the subscription until cancelled, then close the connection (bounded).

        Starts without waiting for Redis: an outage at start is like one later."""
        async with self.link.open(), trio.open_nursery() as nursery:
            if self._channels:
                handlers = {self.keys.summary: self._deliver_summary,
                            self.keys.revoked: self._on_revoked}
                nursery.start_soon(self.link.listen,
                                   {c.encode(): handlers[c] for c in self._channels},
                                   self._subscribed, RETRY_S, name="coordinator/subscription")
            task_status.started(self)
            await trio.sleep_forever()   # the connection serves calls until cancelled

    async def ping(self) -> None:
        await self.link.call(_aio_ping)

    async def probe_write(self) -> None:
        """A write as a command's: on the primary (a replica answers READONLY: an outage), and
        with ``min_acks``, acknowledged by that many replicas within the commands' bound."""
        acks = await self.link.call(_aio_probe_write, self.keys.probe + self.instance,
                                    self.min_acks, int(self.ack_timeout_s * 1000))
        if acks < self.min_acks:
            raise BackendUnavailable("redis", f"{acks} of {self.min_acks} replicas acknowledged "
                                              f"a write within {self.ack_timeout_s:g} s")

    def _subscribed(self) -> None:
        self.link.mark_up()
        self._subscriptions += 1
        if self._subscriptions > 1:
            self._deliver_revocation(RESYNC)   # what was published meanwhile never came
        self.subscribed.set()
        self.subscribed = trio.Event()

    def _on_revoked(self, data: bytes) -> None:
        session_id = data.decode(errors="replace")
        if session_id:
            self._deliver_revocation(session_id)

    # -- lease ------------------------------------------------------------------------------------

    async def lease_acquire(self, token: str, ttl_s: float, known_epoch: int = 0) -> int:
        k = self.keys
        epoch, replicas, acked = await self.link.call(
            _aio_acquire, self.link.scripts["acquire"], [k.lease, k.epoch, k.checkpoint_epoch],
            [token, int(ttl_s * 1000), known_epoch], WAIT_MS)
        if epoch and replicas and not acked:
            log.warning("engine lease: epoch %d confirmed by none of %d replicas within %d ms; "
                        "given back", epoch, replicas, WAIT_MS)
            await self.lease_release(token)
            return 0
        return int(epoch or 0)

    async def lease_renew(self, token: str, ttl_s: float, epoch: int) -> int:
        return await self.link.script("renew", [self.keys.lease, self.keys.epoch],
                                      [token, int(ttl_s * 1000), epoch])

    async def epoch(self) -> int:
        value = await self.link.call(_aio_get, self.keys.epoch)
        return int(value or 0)

    async def lease_release(self, token: str) -> None:
        await self.link.script("release", [self.keys.lease], [token])

    async def lease_holder(self) -> str | None:
        holder = await self.link.call(_aio_get, self.keys.lease)
        return holder.decode() if holder is not None else None

    # -- commands and checkpoints -----------------------------------------------------------------

    async def add_command(self, command: dict) -> str:
        """XADD, then (``min_acks`` > 0) WAIT on the same connection for that many replicas,
        bounded by ``ack_timeout_s``. Raises CommandUnconfirmed when Redis does not answer or
        too few replicas acknowledge: the entry may or may not be in the stream (Redis's WAIT
        does not undo a write), and an entry written is applied, once."""
        data = json.dumps(command).encode()
        try:
            if not self.min_acks:
                return await self.link.call(_aio_xadd, self.keys.commands, data)
            entry, acks = await self.link.call(_aio_xadd_wait, self.keys.commands, data,
                                               self.min_acks, int(self.ack_timeout_s * 1000))
        except BackendUnavailable as exc:
            raise CommandUnconfirmed(exc.reason) from None
        if acks < self.min_acks:
            raise CommandUnconfirmed(f"{acks} of {self.min_acks} replicas acknowledged within "
                                     f"{self.ack_timeout_s:g} s")
        return entry

    async def ensure_group(self) -> None:
        await self.link.call(_aio_group, self.keys.commands, GROUP)

    async def read_commands(self, consumer: str, count: int = 64,
                            block_s: float = 0.5) -> list[Entry]:
        return await self.link.call(_aio_xreadgroup, self.keys.commands, GROUP, consumer, count,
                                int(block_s * 1000))

    async def claim_commands(self, consumer: str) -> list[Entry]:
        return await self.link.call(_aio_xautoclaim, self.keys.commands, GROUP, consumer)

    async def applied(self, command_ids: list[str]) -> set[str]:
        if not command_ids:
            return set()
        return await self.link.call(_aio_applied, self.keys.applied, command_ids)

    async def applied_log(self) -> list[str]:
        return await self.link.call(_aio_lrange, self.keys.log)

    async def checkpoint(self, token: str, state: bytes, summary: bytes, now_ms: int,
                         acks: list[tuple[str, str]], lease_ttl_s: float, *, epoch: int,
                         events: list[dict] | None = None) -> bool:
        k = self.keys
        batch = event_batch([json.dumps(e, separators=(",", ":")).encode() for e in events],
                            now_ms / 1000) if events else b""
        args: list[Any] = [token, state, summary, now_ms, GROUP, int(lease_ttl_s * 1000), epoch,
                           batch]
        for entry, command in acks:
            args += [entry, command]
        done = await self.link.script("checkpoint", [k.lease, k.checkpoint, k.summary, k.commands,
                                                    k.applied, k.log, k.epoch, k.checkpoint_epoch,
                                                    k.events], args)
        return bool(done)

    async def load_checkpoint(self) -> bytes | None:
        return await self.link.call(_aio_get, self.keys.checkpoint)

    async def load_summary(self) -> bytes | None:
        return await self.link.call(_aio_get, self.keys.summary)

    # -- sessions -----------------------------------------------------------------------------------

    async def save_session(self, record: SessionRecord) -> None:
        fields = {"created_at": repr(record.created_at), "expires_at": repr(record.expires_at),
                  "frequency": repr(record.frequency), "revoked": "1" if record.revoked else "0"}
        await self.link.call(_aio_hset_expire, self.keys.session + record.id, fields,
                             int(record.expires_at * 1000))

    async def get_session(self, session_id: str) -> SessionRecord | None:
        fields = await self.link.call(_aio_hgetall, self.keys.session + session_id)
        try:
            return SessionRecord(id=session_id, created_at=float(fields[b"created_at"]),
                                 expires_at=float(fields[b"expires_at"]),
                                 frequency=float(fields[b"frequency"]),
                                 revoked=fields.get(b"revoked") == b"1")
        except (KeyError, ValueError):
            return None   # gone (expired), or never there

    async def revoke_session(self, session_id: str) -> bool:
        done = await self.link.script("revoke", [self.keys.session + session_id, self.keys.revoked],
                                      [session_id])
        return bool(done)

    # -- the Brise-Circuit ----------------------------------------------------------------------------

    async def load_breaker(self) -> tuple[int, bytes | None]:
        version, state = await self.link.call(_aio_hmget, self.keys.safeguard, ["version", "state"])
        return int(version or 0), state

    async def swap_breaker(self, version: int, data: bytes) -> bool:
        done = await self.link.script("swap", [self.keys.safeguard], [version, data])
        return bool(done)

    # -- Idempotency-Key records ----------------------------------------------------------------------

    async def idempotency_claim(self, record: str, fingerprint: str, command_id: str,
                                ttl_s: float, hold_s: float) -> Claim:
        reply = await self.link.script("idem_claim", [self.keys.idempotency + record],
                                       [fingerprint, command_id, int(ttl_s * 1000),
                                        int(hold_s * 1000)])
        state, claimed = reply[0].decode(), reply[1].decode()
        if len(reply) == 4:
            return Claim(state, claimed, int(reply[2]), bytes(reply[3]))
        return Claim(state, claimed)

    async def idempotency_answer(self, record: str, fingerprint: str, command_id: str,
                                 status: int, body: bytes, ttl_s: float) -> Claim:
        claimed, kept, kept_body = await self.link.script(
            "idem_answer", [self.keys.idempotency + record],
            [fingerprint, command_id, status, body, int(ttl_s * 1000)])
        return Claim("replay", claimed.decode(), int(kept), bytes(kept_body))

    async def idempotency_release(self, record: str) -> None:
        await self.link.script("idem_release", [self.keys.idempotency + record], [])

    # -- the audit chain's head ----------------------------------------------------------------------

    async def advance_audit_head(self, record_id: int, link: bytes) -> None:
        await self.link.script("advance", [self.keys.audit_head], [record_id, link])

    async def audit_head(self) -> tuple[int, bytes] | None:
        record_id, link = await self.link.call(_aio_hmget, self.keys.audit_head, ["id", "link"])
        if record_id is None or link is None:
            return None
        return int(record_id), bytes(link)

    # -- presence -------------------------------------------------------------------------------------

    async def set_subscribers(self, process: str, count: int, ttl_s: float) -> None:
        await self.link.call(_aio_set_px, self.keys.subscribers + process, count, int(ttl_s * 1000))

    async def total_subscribers(self) -> int:
        return await self.link.call(_aio_sum_keys, self.keys.subscribers + "*")


def _decode_entry(fields: dict) -> dict | None:
    try:
        command = json.loads(fields[b"c"])
    except (KeyError, ValueError):
        return None
    return command if isinstance(command, dict) else None


# -- the asyncio side: the only code here that touches redis.asyncio objects ----------------------

async def _aio_ping(client: Any) -> None:
    await client.ping()


async def _aio_probe_write(client: Any, key: str, acks: int, timeout_ms: int) -> int:
    if not acks:
        await client.set(key, 1, px=10_000)
        return 0
    async with client.pipeline(transaction=False) as pipe:   # one connection: WAIT counts it
        pipe.set(key, 1, px=10_000)
        pipe.execute_command("WAIT", acks, timeout_ms)
        _, acknowledged = await pipe.execute()
    return int(acknowledged)


async def _aio_get(client: Any, key: str) -> bytes | None:
    return await client.get(key)


async def _aio_hmget(client: Any, key: str, fields: list[str]) -> list[bytes | None]:
    return await client.hmget(key, fields)


async def _aio_hgetall(client: Any, key: str) -> dict[bytes, bytes]:
    return await client.hgetall(key)


async def _aio_hset_expire(client: Any, key: str, fields: dict[str, str], at_ms: int) -> None:
    async with client.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping=fields)
        pipe.pexpireat(key, at_ms)
        await pipe.execute()


async def _aio_set_px(client: Any, key: str, value: int, ttl_ms: int) -> None:
    await client.set(key, value, px=ttl_ms)


async def _aio_sum_keys(client: Any, pattern: str) -> int:
    keys = [key async for key in client.scan_iter(match=pattern, count=100)]
    return sum(int(v) for v in await client.mget(keys) if v is not None) if keys else 0


async def _aio_acquire(client: Any, script: Any, keys: list[str], args: list[Any],
                       wait_ms: int) -> tuple[int, int, int]:
    """(epoch or 0, replicas of the primary, replicas that confirmed it): the acquisition and
    its WAIT in one pipeline, so on one connection (WAIT counts that connection's writes)."""
    role = await client.execute_command("ROLE")
    if _text(role[0]) != "master":
        return 0, 0, 0      # a replica (the primary moved): nothing can be acquired here
    replicas = len(role[2]) if len(role) > 2 and role[2] else 0
    if not replicas:
        return int(await script(keys=keys, args=args, client=client)), 0, 0
    async with client.pipeline(transaction=False) as pipe:
        await script(keys=keys, args=args, client=pipe)
        pipe.execute_command("WAIT", replicas, wait_ms)
        epoch, acked = await pipe.execute()
    return int(epoch), replicas, int(acked)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _aio_xadd(client: Any, stream: str, data: bytes) -> str:
    return (await client.xadd(stream, {"c": data})).decode()


async def _aio_xadd_wait(client: Any, stream: str, data: bytes, acks: int,
                         timeout_ms: int) -> tuple[str, int]:
    # One pipeline is one connection: WAIT counts the replicas that have this very write.
    async with client.pipeline(transaction=False) as pipe:
        pipe.xadd(stream, {"c": data})
        pipe.execute_command("WAIT", acks, timeout_ms)
        entry, acknowledged = await pipe.execute()
    return entry.decode(), int(acknowledged)


async def _aio_group(client: Any, stream: str, group: str) -> None:
    try:
        # From id 0: commands added before any engine ever started are not skipped.
        await client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.exceptions.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def _aio_xreadgroup(client: Any, stream: str, group: str, consumer: str, count: int,
                          block_ms: int) -> list[Entry]:
    try:
        reply = await client.xreadgroup(group, consumer, {stream: ">"}, count=count, block=block_ms)
    except redis.exceptions.ResponseError as exc:
        if "NOGROUP" not in str(exc):
            raise
        await _aio_group(client, stream, group)   # Redis restarted empty: make the group again
        return []
    return [(entry.decode(), _decode_entry(fields)) for _, entries in reply or []
            for entry, fields in entries]


async def _aio_xautoclaim(client: Any, stream: str, group: str, consumer: str) -> list[Entry]:
    claimed: list[Entry] = []
    start = "0-0"
    while True:
        reply = await client.xautoclaim(stream, group, consumer, min_idle_time=0,
                                        start_id=start, count=100)
        start, entries = reply[0], reply[1]
        claimed += [(entry.decode(), _decode_entry(fields)) for entry, fields in entries
                    if fields is not None]
        if start in (b"0-0", "0-0"):
            return claimed


async def _aio_applied(client: Any, key: str, command_ids: list[str]) -> set[str]:
    scores = await client.zmscore(key, command_ids)
    return {c for c, score in zip(command_ids, scores) if score is not None}


async def _aio_lrange(client: Any, key: str) -> list[str]:
    return [v.decode() for v in await client.lrange(key, 0, -1)]
