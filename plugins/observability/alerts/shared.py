"""Circuit-breaker state shared by replicas through Redis, so one replica learning that
a deployment is down spares the others.

Which Redis: the one the gateway replicas already share, `[plugins.serve] redis_url`
(+ `redis_password_env`), under its `key_prefix` (default `herd:serve`). No second
Redis setting: `[plugins.alerts] breaker_shared` only says whether to use it (unset:
when redis_url is set; true: redis_url must be set; false: per process).

Keys, per alias *and deployment* (`{fp}`: a hash of provider, model and endpoint, so
two configs that give one alias different backends never trip each other):
  {prefix}:breaker:{alias}@{fp}         hash   state, since, until (Redis TIME), why,
                                               failures, by (replica), version
  {prefix}:breaker:{alias}@{fp}:probe   string the replica holding the half-open probe
  {prefix}:breaker:{alias}@{fp}:fails   zset   failed attempts of every replica (window)
  {prefix}:breaker:events               pub/sub channel: one JSON message per change

Every key has a TTL (the open record: cool-down + probe lease; the probe lock: the
probe lease; failures: the window), so a replica that dies can leave nothing open for
longer than that.

The call path never waits on Redis: it reads the local `CircuitBreaker`, whose
circuits this module keeps in step from two daemon threads — a subscriber (pub/sub
messages, a full re-read every `RESYNC_S`, reconnects) and a writer (the local
transitions and failures, queued by the call path, sent as one Lua script each).
When Redis is unreachable the breaker keeps working per process, `ok` is False, and
the alerts plugin fires a `breaker_shared` alert until Redis answers again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelherd.config import validate_table
from modelherd.errors import ConfigError
from modelherd.plugins.observability.alerts.shared_scripts import (
    CLAIM_LUA,
    CLOSE_LUA,
    RENEW_LUA,
    REPORT_LUA,
)

if TYPE_CHECKING:
    from modelherd import Herd
    from modelherd.plugins.observability.alerts.breaker import CircuitBreaker, CircuitState
    from modelherd.plugins.observability.alerts.settings import AlertSettings

log = logging.getLogger("modelherd.alerts")

#: seconds between full re-reads of every watched circuit (also the health check)
RESYNC_S = 1.0
#: seconds between reconnect attempts while Redis is unreachable
RETRY_S = 2.0
#: socket timeouts: a hung Redis costs the background threads this, never a call
TIMEOUT_S = 1.0
#: the longest probe-lock lease (shorter with a shorter cool-down)
MAX_LEASE_S = 10.0
#: settings whose values never go into a deployment fingerprint
_SECRETISH = re.compile(r"key|secret|token|password|auth", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class SharedConfig:
    """Where the shared circuit state lives (`[plugins.serve]`'s Redis)."""

    url: str
    password: str | None
    #: "{[plugins.serve] key_prefix}:breaker"
    prefix: str

    def safe_url(self) -> str:
        """The URL without credentials (the password is never in it: checked)."""
        from urllib.parse import urlsplit

        parts = urlsplit(self.url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


def shared_config(herd: Herd, settings: AlertSettings) -> SharedConfig | None:
    """The shared-breaker config, None for a per-process breaker; a wrong setting is
    one ConfigError line naming the file, the key and the fix."""
    source = herd.config.source
    where = f"{source}: [plugins.alerts] breaker_shared"
    mode = settings.breaker_shared
    if mode is False:
        return None
    if not settings.breaker:
        if mode:
            raise ConfigError(
                f"{where}: true, but breaker = false switches the breaker off — "
                f"remove breaker_shared, or set breaker = true"
            )
        return None
    from modelherd.plugins.serve.settings import DOCS as SERVE_DOCS
    from modelherd.plugins.serve.settings import ServeSettings

    serve = validate_table(
        ServeSettings, herd.plugin_settings("serve"), f"{source}: [plugins.serve]", SERVE_DOCS
    )
    if serve.redis_url is None:
        if mode:
            raise ConfigError(
                f"{where}: true needs the Redis the replicas share — set redis_url in "
                f'[plugins.serve] (e.g. "redis://127.0.0.1:6379/0"), or remove breaker_shared'
            )
        return None
    password = None
    name = serve.redis_password_env
    if name:
        password = herd.env.get(name) or os.environ.get(name)
        if not password:
            raise ConfigError(
                f"{source}: [plugins.serve] redis_password_env: ${name} is not set (the "
                f"circuit breaker shares its state through that Redis) — export {name}, or "
                f"set [plugins.alerts] breaker_shared = false"
            )
    import importlib.util

    if importlib.util.find_spec("redis") is None:  # imported by the background thread
        raise ConfigError(
            f"{where}: sharing circuit state through [plugins.serve] redis_url needs the "
            f'redis package — pip install "modelherd[redis]", or set breaker_shared = false'
        )
    return SharedConfig(serve.redis_url, password, f"{serve.key_prefix}:breaker")


def deployment_fingerprint(provider: str, model: str, settings: dict[str, Any]) -> str:
    """12 hex digits naming a deployment: provider, model and endpoint-like settings
    (never a value whose name looks like a secret)."""
    parts = [provider, model]
    for key in sorted(settings):
        value = settings[key]
        if isinstance(value, str | int | float) and not _SECRETISH.search(key):
            parts.append(f"{key}={value}")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


class SharedBreaker:
    """Keeps a local `CircuitBreaker` in step with the replicas' state in Redis."""

    def __init__(
        self,
        config: SharedConfig,
        breaker: CircuitBreaker,
        aliases: Callable[[], Iterable[str]],
        fingerprint: Callable[[str], str],
        on_health: Callable[[bool, str | None], None] | None = None,
        replica: str | None = None,
    ) -> None:
        self.config = config
        self.breaker = breaker
        self.aliases = aliases
        self._fingerprint = fingerprint
        self.on_health = on_health
        #: this process, as other replicas see it in `by`
        self.replica = replica or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"
        self.channel = f"{config.prefix}:events"
        #: the probe lock's lease, seconds, renewed every third of it while the probe is
        #: out: a replica that dies mid-probe holds the others back this long at most
        self.lease_s = min(breaker.cooldown_s, MAX_LEASE_S)
        #: Redis answering now; False until the first connect
        self.ok = False
        self.error: str | None = "not connected yet"
        self.down_since: float | None = time.time()
        #: alias -> clock deadline of the probe lock this replica holds
        self.granted: dict[str, float] = {}
        #: alias -> clock time before which asking for the probe lock again is pointless
        self.denied_until: dict[str, float] = {}
        self.counters = {"published": 0, "applied": 0, "claims": 0, "dropped": 0}
        self._claiming: set[str] = set()
        self._fps: dict[str, str] = {}
        self._outbox: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._reconnect = threading.Event()
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._threads: list[threading.Thread] = []

    # ---- the call path: dictionary lookups and a queue put, never Redis ----------

    def probe_allowed(self, alias: str, now: float) -> bool:
        """May this replica's next call be the half-open probe? Asks for the lock (in
        the background) when it is not held; False meanwhile (fail over)."""
        if not self.ok:
            return True  # Redis unreachable: the local rule (one probe per process)
        if self.granted.get(alias, 0.0) > now:
            return True
        if alias not in self._claiming and self.denied_until.get(alias, 0.0) <= now:
            self._claiming.add(alias)
            self._outbox.put(("claim", alias))
        return False

    def failed(self, alias: str, error_name: str) -> None:
        self._outbox.put(("fail", alias, error_name))

    def local_change(
        self, alias: str, old: CircuitState, new: CircuitState, why: str, failures: int
    ) -> None:
        if new == "open":
            self._outbox.put(("reopen" if old == "half_open" else "open", alias, why, failures))
        elif new == "closed" and old == "half_open":
            self._outbox.put(("close", alias))
        if new != "half_open":
            self.granted.pop(alias, None)

    # ---- keys ----------------------------------------------------------------

    def fingerprint(self, alias: str) -> str:
        fp = self._fps.get(alias)
        if fp is None:
            fp = self._fps[alias] = self._fingerprint(alias)
        return fp

    def keys(self, alias: str) -> list[str]:
        base = f"{self.config.prefix}:{alias}@{self.fingerprint(alias)}"
        return [base, f"{base}:probe", f"{base}:fails"]

    # ---- health ----------------------------------------------------------------

    def _up(self) -> None:
        if self.ok or self._stop.is_set():
            return
        was_down = self.error != "not connected yet"
        self.ok, self.error, self.down_since = True, None, None
        if self.on_health is not None:  # the alerts plugin: a `breaker_shared` alert
            self.on_health(True, None)
        elif was_down:
            log.warning(
                "circuit breaker: Redis at %s answers again; sharing circuit state",
                self.config.safe_url(),
            )

    def _down(self, exc: BaseException) -> None:
        self._reconnect.set()
        if self._stop.is_set() or (not self.ok and self.error != "not connected yet"):
            return
        self.ok = False
        self.granted.clear()
        self.error = f"{type(exc).__name__}: {str(exc)[:160]}"
        self.down_since = time.time()
        if self.on_health is not None:
            self.on_health(False, self.error)
        else:
            log.warning(
                "circuit breaker: Redis at %s is unreachable (%s) — each replica decides "
                "its circuits alone until it is back",
                self.config.safe_url(),
                self.error,
            )

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mode": "redis",
            "url": self.config.safe_url(),
            "prefix": self.config.prefix,
            "replica": self.replica,
            "ok": self.ok,
            **self.counters,
        }
        if not self.ok:
            out["error"] = self.error
            out["down_since"] = self.down_since
        return out

    # ---- the background threads ------------------------------------------------

    def start(self) -> None:
        if self._threads:
            return
        for target, name in (
            (self._subscriber, "herd-breaker-sub"),
            (self._writer, "herd-breaker-pub"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Send what is queued (an open circuit this process decided reaches the others
        before it exits), then let go. The subscriber is not waited for: it leaves at
        its next wake-up (<= 0.5 s), and a closing herd must not wait on that."""
        self._stop.set()
        self._outbox.put(None)
        for thread in self._threads:
            if thread.name == "herd-breaker-pub":
                thread.join(2 * TIMEOUT_S)
        self._threads.clear()

    def _connect(self) -> Any:
        import redis

        client = redis.Redis.from_url(
            self.config.url,
            password=self.config.password,
            socket_timeout=TIMEOUT_S,
            socket_connect_timeout=TIMEOUT_S,
            decode_responses=True,
        )
        self._scripts = {
            "report": client.register_script(REPORT_LUA),
            "claim": client.register_script(CLAIM_LUA),
            "close": client.register_script(CLOSE_LUA),
            "renew": client.register_script(RENEW_LUA),
        }
        return client

    def _subscriber(self) -> None:
        while not self._stop.is_set():
            pubsub = None
            try:
                if self._client is None:
                    self._client = self._connect()
                pubsub = self._client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.channel)
                self._reconnect.clear()
                self.resync()  # subscribed first: nothing published meanwhile is missed
                self._up()
                next_sync = time.monotonic() + RESYNC_S
                while not self._stop.is_set() and not self._reconnect.is_set():
                    message = pubsub.get_message(timeout=min(0.5, RESYNC_S))
                    if message is not None and message.get("type") == "message":
                        self._on_message(message.get("data"))
                    if time.monotonic() >= next_sync:
                        next_sync = time.monotonic() + RESYNC_S
                        self.resync()
            except Exception as exc:  # Redis down, hung, refused: the local breaker rules
                if self._stop.is_set():
                    break
                self._down(exc)
                self._stop.wait(RETRY_S)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        pubsub.close()
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def _writer(self) -> None:
        while True:
            try:
                item = self._outbox.get(timeout=self.lease_s / 3 if self.granted else None)
            except queue.Empty:
                self._renew()
                continue
            if item is None or self._stop.is_set():
                return
            try:
                if not self.ok or self._client is None:
                    self.counters["dropped"] += 1  # re-published from local state on reconnect
                    continue
                self._send(item)
            except Exception as exc:
                self._down(exc)
            finally:
                if item[0] == "claim":
                    self._claiming.discard(item[1])  # answered: the call path may ask again

    def _renew(self) -> None:
        """Keep the probe locks this replica holds while their probe is out."""
        if not self.ok or self._client is None:
            return
        ms = int(self.lease_s * 1000)
        for alias, deadline in list(self.granted.items()):
            circuit = self.breaker.circuits.get(alias)
            if circuit is None or circuit.state != "half_open":
                if self.breaker.clock() > deadline:
                    self.granted.pop(alias, None)  # granted, never used: let it lapse
                continue
            try:
                held = self._scripts["renew"](keys=self.keys(alias)[:2], args=[self.replica, ms])
            except Exception as exc:
                self._down(exc)
                return
            if int(held):
                self.granted[alias] = self.breaker.clock() + self.lease_s
            else:
                self.granted.pop(alias, None)

    def _send(self, item: tuple[Any, ...]) -> None:
        kind, alias = item[0], item[1]
        keys = self.keys(alias)
        breaker = self.breaker
        if kind == "claim":
            self.counters["claims"] += 1
            code, value = self._scripts["claim"](
                keys=keys[:2], args=[self.replica, int(self.lease_s * 1000)]
            )
            now = breaker.clock()
            if int(code) == 1:
                self.granted[alias] = now + self.lease_s
            elif int(code) == 0:
                self.denied_until[alias] = now + max(0.05, float(value) / 1000)
            else:
                self.denied_until[alias] = now + max(0.05, float(value))
            return
        if kind == "close":
            self._scripts["close"](
                keys=keys, args=[self.replica, self.channel, alias, self.fingerprint(alias)]
            )
            self.counters["published"] += 1
            return
        if kind == "fail":
            args = ["fail", breaker.cooldown_s, self.lease_s, item[2], self.replica, 0]
            member = f"{self.replica}:{time.monotonic_ns()}"
            args += [f"{breaker.window_s:g}", breaker.threshold, member]
        else:  # open / reopen: this replica's evidence
            args = [kind, breaker.cooldown_s, self.lease_s, item[2], self.replica, item[3]]
            args += [0, 0, ""]
        args += [self.channel, alias, self.fingerprint(alias)]
        changed, now, until, _version, why, by = self._scripts["report"](keys=keys, args=args)
        if int(changed):
            self.counters["published"] += 1
        if float(until) > 0 and by and by != self.replica:
            self._apply_open(alias, float(until) - float(now), str(why), str(by))
        elif int(changed) and kind == "fail":  # the replicas' failures together opened it
            self._apply_open(alias, float(until) - float(now), str(why), self.replica)

    # ---- applying the replicas' state ------------------------------------------

    def _apply_open(self, alias: str, remaining_s: float, why: str, by: str) -> None:
        opened_at = self.breaker.clock() + remaining_s - self.breaker.cooldown_s
        if self.breaker.apply_remote(alias, "open", opened_at, why, by):
            self.counters["applied"] += 1

    def _on_message(self, data: Any) -> None:
        try:
            event = json.loads(data)
            alias = str(event["alias"])
        except (TypeError, ValueError, KeyError):
            return
        if event.get("by") == self.replica:
            return  # our own change, applied already
        if alias not in self.breaker.circuits and event.get("state") != "open":
            return
        if event.get("fp") != self.fingerprint(alias):
            return  # the same alias name, another deployment
        if event.get("state") == "open":
            remaining = float(event["until"]) - float(event["now"])
            self._apply_open(alias, remaining, str(event.get("why", "")), str(event.get("by")))
        elif self.breaker.apply_remote(
            alias, "closed", 0.0, str(event.get("why", "")), str(event.get("by"))
        ):
            self.granted.pop(alias, None)
            self.counters["applied"] += 1

    def resync(self) -> None:
        """Read every watched circuit's record (one pipelined round trip) and apply it:
        catches opens missed while (re)connecting, and re-publishes local opens Redis
        has not heard of (decided while it was down)."""
        client = self._client
        aliases = [a for a in self.aliases() if self.breaker.allowed(a)]
        pipe = client.pipeline(transaction=False)
        pipe.time()
        for alias in aliases:
            pipe.hgetall(self.keys(alias)[0])
        answers = pipe.execute()
        seconds, micros = answers[0]
        redis_now = float(seconds) + float(micros) / 1e6
        for alias, record in zip(aliases, answers[1:], strict=True):
            circuit = self.breaker.circuits.get(alias)
            until = float(record.get("until", 0) or 0) if record else 0.0
            if until > redis_now:
                if record.get("by") != self.replica:
                    self._apply_open(alias, until - redis_now, record.get("why", ""), record["by"])
                continue
            if circuit is None or circuit.state == "closed":
                continue
            if circuit.origin is None and circuit.state == "open" and not record:
                # ours, and Redis does not know it: published while it was down
                remaining = self.breaker.cooldown_s - (self.breaker.clock() - circuit.opened_at)
                if remaining > 0:
                    self._outbox.put(("open", alias, circuit.why, len(circuit.failures)))
            # another replica's open whose record is gone (expired unprobed, or its close
            # was missed) stays open here: after the cool-down this replica asks for the
            # probe lock like any other, so one probe still decides, never a stampede
