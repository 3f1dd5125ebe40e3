"""Per-worker caches for MLflow's basic-auth lookups, dropped at once on every
worker and replica when anything in the auth database changes.

MLflow's basic auth reads the auth database on every request: the user
(`store.get_user`, for `sender_is_admin()` and every permission check), the
user's grants (`store.list_grants`, one query per check) and, for a request
about a run, the whole run from the tracking store just to learn its
experiment. Under load those reads are a large share of a small request.

What this module caches, in each uvicorn worker's memory:

- `store.get_user(username)` and `store.list_grants(user_id, workspace, types)`;
- a run's experiment id, for the run permission check (a run never moves to
  another experiment);
- MLflow's own credential cache (a password is hashed once per TTL) is kept,
  made single-flight: when an entry expires under load, one request per
  credential pays for the hash and the others wait for its answer instead of
  all hashing at once.

Invalidation. The migrate job installs a statement-level trigger on every
table of the auth database that sends `NOTIFY stack_auth_changed`. Each worker
keeps one connection that LISTENs. Any change, through MLflow's REST API on any
worker or replica, `scripts/users`, or SQL typed by hand, empties every
worker's caches (and MLflow's credential cache) within milliseconds of its
commit. While that connection is down, or if the triggers are missing, the
caches are bypassed and every lookup goes to the database; after a reconnect
they start empty. Every entry also expires after MLFLOW_AUTH_CACHE_TTL_SECONDS
(the upper bound in every case); 0 turns all of it off, MLflow's credential
cache included.

A lookup that raced a change is never stored: each store is tagged with the
invalidation count read before the query and dropped if a notification came
in meanwhile.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from collections.abc import Callable
from typing import Any

_logger = logging.getLogger("stack_ops.server.authcache")

CHANNEL = "stack_auth_changed"
TRIGGER = "stack_auth_notify"
# Tables of the auth database whose changes cannot change a decision.
UNWATCHED = ("stack_auth_failures", "alembic_version")
MAX_ENTRIES = 10_000

TRIGGER_DDL = f"""
CREATE OR REPLACE FUNCTION {TRIGGER}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', TG_TABLE_NAME);
    RETURN NULL;
END $$;
DO $$
DECLARE t text;
BEGIN
    FOR t IN
        SELECT tablename FROM pg_tables
        WHERE schemaname = current_schema() AND tablename NOT IN {UNWATCHED!r}
    LOOP
        EXECUTE format(
            'CREATE OR REPLACE TRIGGER {TRIGGER} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE'
            ' ON %I FOR EACH STATEMENT EXECUTE FUNCTION {TRIGGER}()', t);
    END LOOP;
END $$;
"""

# Tables of the auth database without the trigger (the server checks at every connect).
MISSING_TRIGGERS_SQL = f"""
SELECT t.tablename FROM pg_tables t
WHERE t.schemaname = current_schema() AND t.tablename NOT IN {UNWATCHED!r}
  AND NOT EXISTS (
    SELECT 1 FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE g.tgname = '{TRIGGER}' AND c.relname = t.tablename AND n.nspname = t.schemaname)
ORDER BY 1
"""


class Cache:
    """A thread-safe map whose entries expire after `ttl` seconds and are
    dropped whole by `clear()`. `put` ignores values read before the last clear."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.clock = ttl, clock
        self.lock = threading.Lock()
        self.data: dict[Any, tuple[float, Any]] = {}
        self.generation = 0

    def get(self, key) -> tuple[bool, Any]:
        with self.lock:
            hit = self.data.get(key)
            if hit is None:
                return False, None
            if hit[0] <= self.clock():
                del self.data[key]
                return False, None
            return True, hit[1]

    def put(self, key, value, generation: int) -> None:
        with self.lock:
            if generation != self.generation:
                return  # read before a change landed: never store it
            if len(self.data) >= MAX_ENTRIES:
                self.data.clear()
            self.data[key] = (self.clock() + self.ttl, value)

    def clear(self) -> None:
        with self.lock:
            self.generation += 1
            self.data.clear()

    def __len__(self) -> int:
        return len(self.data)


class AuthCache:
    """The caches of one worker and the listener that keeps them honest."""

    def __init__(self, ttl: float, connect: Callable[[], Any] | None = None) -> None:
        self.ttl = ttl
        self.users = Cache(ttl)
        self.grants = Cache(ttl)
        self.run_experiments = Cache(ttl)
        self.connect = connect
        self.live = False  # True while the listener is connected and every table has its trigger
        self.notifications = 0
        self.extra_clears: list[Callable[[], None]] = []  # MLflow's credential cache
        # Others riding on the same connection (guard.py's failed sign-ins):
        # called with the connection once it listens, and when it is lost;
        # notifications on their own channels go to their callback (payload).
        self.on_connect: list[Callable[[Any], None]] = []
        self.on_disconnect: list[Callable[[], None]] = []
        self.channels: dict[str, Callable[[str], None]] = {}
        self._flights: dict[Any, threading.Lock] = {}
        self._flights_lock = threading.Lock()

    # --- invalidation ---------------------------------------------------------
    def clear(self) -> None:
        for cache in (self.users, self.grants, self.run_experiments):
            cache.clear()
        for fn in self.extra_clears:
            fn()

    def listen_forever(self, stop: threading.Event | None = None, ping_s: float = 20) -> None:
        """LISTEN on the auth database; clear on every notification. On any
        connection problem: mark the caches bypassed, clear, retry each second."""
        stop = stop or threading.Event()
        warned = False
        while not stop.is_set():
            conn = None
            try:
                conn = self.connect()
                conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute(f"LISTEN {CHANNEL}")
                    cur.execute(MISSING_TRIGGERS_SQL)
                    missing = [row[0] for row in cur.fetchall()]
                if missing:
                    if not warned:
                        _logger.warning(
                            "auth caches off: tables without the %s trigger (run the migrate job): %s",
                            TRIGGER,
                            ", ".join(missing),
                        )
                        warned = True
                    conn.close()
                    stop.wait(30)
                    continue
                for hook in self.on_connect:
                    hook(conn)
                self.clear()
                self.live = True
                warned = False
                while not stop.is_set():
                    ready, _, _ = select.select([conn], [], [], ping_s)
                    if not ready:
                        with conn.cursor() as cur:  # a dead connection raises here
                            cur.execute("SELECT 1")
                    conn.poll()
                    if conn.notifies:
                        self.dispatch(list(conn.notifies))
                        conn.notifies.clear()
            except Exception as e:  # noqa: BLE001 (any failure: bypass, then retry)
                if self.live or not warned:
                    _logger.warning("auth caches bypassed until the database is back: %s", e)
                    warned = True
            finally:
                self.live = False
                self.clear()
                for hook in self.on_disconnect:
                    hook()
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:  # noqa: BLE001
                        pass
            stop.wait(1)

    def dispatch(self, notifies: list) -> None:
        """Notifications (psycopg2 Notify: channel, payload) read together: the
        caches are emptied once for any number of auth changes; each one on
        another channel goes to that channel's callback."""
        changes = 0
        for notify in notifies:
            callback = self.channels.get(notify.channel)
            if callback is None:
                changes += 1
            else:
                callback(notify.payload)
        if changes:
            self.notifications += changes
            self.clear()

    # --- cached lookups -------------------------------------------------------
    def cached(self, cache: Cache, key, load: Callable[[], Any], copy: Callable[[Any], Any] = lambda v: v):
        if not self.live:
            return load()
        hit, value = cache.get(key)
        if hit:
            return copy(value)
        generation = cache.generation
        value = load()  # an exception (no such user) is never cached
        cache.put(key, value, generation)
        return copy(value)

    def single_flight(self, key, run: Callable[[], Any]):
        """Run `run` for `key` once at a time: concurrent callers with the same
        key wait for the first (which fills MLflow's cache) and then run `run`
        themselves, finding the cached answer."""
        with self._flights_lock:
            lock = self._flights.setdefault(key, threading.Lock())
        with lock:
            try:
                return run()
            finally:
                with self._flights_lock:
                    if self._flights.get(key) is lock:
                        del self._flights[key]


def install(auth_module, cache: AuthCache) -> None:
    """Put the caches in front of MLflow's auth lookups (`mlflow.server.auth`):
    methods of its `store` instance and two module functions, looked up by name
    at call time. tests/test_mlflow_contract.py pins what this relies on."""
    # Everything this relies on is looked up before anything is patched, so an
    # MLflow without it (AttributeError) is left exactly as it was.
    store = auth_module.store
    get_user, list_grants = store.get_user, store.list_grants
    run_requirement = auth_module._run_requirement
    Requirement = auth_module.Requirement
    experiment_type, run_type = auth_module.RESOURCE_TYPE_EXPERIMENT, auth_module.RESOURCE_TYPE_RUN
    user_auth_cache = auth_module._USER_AUTH_CACHE
    if user_auth_cache is not None:
        lock = auth_module._USER_AUTH_CACHE_LOCK
        authenticate = auth_module._authenticate_cached
        key_of = auth_module._auth_cache_key

    def cached_get_user(username: str):
        return cache.cached(cache.users, username, lambda: get_user(username))

    def cached_list_grants(user_id: int, workspace: str, resource_types):
        key = (user_id, workspace, frozenset(resource_types))
        return cache.cached(cache.grants, key, lambda: list_grants(user_id, workspace, resource_types), list)

    store.get_user = cached_get_user
    store.list_grants = cached_list_grants

    def cached_run_requirement(run_id: str, action: str):
        hit, experiment_id = cache.run_experiments.get(run_id) if cache.live else (False, None)
        if not hit:
            generation = cache.run_experiments.generation
            resolved = run_requirement(run_id, action)  # MLflow's own, on a miss
            if resolved is not None and cache.live:
                cache.run_experiments.put(run_id, resolved[0][1], generation)
            return resolved
        # The same requirements MLflow's _run_requirement builds from the run's experiment.
        experiment = (experiment_type, experiment_id)
        return experiment, [
            Requirement(experiment_type, experiment_id, "read"),
            Requirement(run_type, "*", action, fallback_if_no_grant=(experiment,)),
        ]

    auth_module._run_requirement = cached_run_requirement

    if user_auth_cache is not None:

        def clear_credentials() -> None:
            with lock:
                user_auth_cache.clear()

        cache.extra_clears.append(clear_credentials)

        def single_flight_authenticate(username: str, password: str):
            key = key_of(username, password)
            with lock:
                hit = user_auth_cache.get(key)
            if hit is not None:
                return hit
            return cache.single_flight(key, lambda: authenticate(username, password))

        auth_module._authenticate_cached = single_flight_authenticate


def start(
    auth_module,
    ttl: float,
    connect: Callable[[], Any],
    riders: tuple[Callable[[AuthCache], None], ...] = (),
) -> AuthCache | None:
    """Install the caches and start this worker's listener (a daemon thread),
    after each of `riders` has hooked itself onto it (AuthCache.on_connect...).
    None when turned off (MLFLOW_AUTH_CACHE_TTL_SECONDS=0)."""
    if ttl <= 0:
        return None
    cache = AuthCache(ttl, connect)
    install(auth_module, cache)
    for ride in riders:
        ride(cache)
    threading.Thread(target=cache.listen_forever, name="stack-auth-listener", daemon=True).start()
    return cache
