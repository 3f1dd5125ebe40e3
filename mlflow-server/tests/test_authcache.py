"""stack_ops/server/authcache.py: the per-worker auth caches, their expiry,
their invalidation by the listener, and the race a change must never lose."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from types import SimpleNamespace

import pytest

from stack_ops.server import authcache
from stack_ops.server.authcache import AuthCache, Cache


def test_entries_expire_after_the_ttl(clock) -> None:
    cache = Cache(60, clock)
    cache.put("alice", "user", cache.generation)
    assert cache.get("alice") == (True, "user")
    clock.now += 59.9
    assert cache.get("alice") == (True, "user")
    clock.now += 0.2
    assert cache.get("alice") == (False, None)
    assert len(cache) == 0


def test_a_value_read_before_a_clear_is_never_stored() -> None:
    cache = Cache(60)
    before = cache.generation
    cache.clear()  # a notification arrived while the value was being read
    cache.put("alice", "stale", before)
    assert cache.get("alice") == (False, None)
    cache.put("alice", "fresh", cache.generation)
    assert cache.get("alice") == (True, "fresh")


def test_the_cache_never_grows_past_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(authcache, "MAX_ENTRIES", 3)
    cache = Cache(60)
    for i in range(7):
        cache.put(i, i, cache.generation)
        assert len(cache) <= 3
    assert cache.get(6) == (True, 6)


def test_lookups_go_to_the_database_while_the_listener_is_down() -> None:
    ac = AuthCache(60)
    calls = []

    def load() -> str:
        calls.append(1)
        return "user"

    assert [ac.cached(ac.users, "alice", load) for _ in range(3)] == ["user"] * 3
    assert len(calls) == 3  # not live: bypassed
    ac.live = True
    assert [ac.cached(ac.users, "alice", load) for _ in range(3)] == ["user"] * 3
    assert len(calls) == 4  # live: one query, then hits


def test_a_failed_lookup_is_not_cached_and_lists_are_copies() -> None:
    ac = AuthCache(60)
    ac.live = True

    def missing():
        raise LookupError("no such user")

    for _ in range(2):
        with pytest.raises(LookupError):
            ac.cached(ac.users, "ghost", missing)
    assert ac.users.get("ghost") == (False, None)

    first = ac.cached(ac.grants, "k", lambda: ["grant"], list)
    first.append("mutated by a caller")
    assert ac.cached(ac.grants, "k", lambda: ["other"], list) == ["grant"]


def test_a_change_during_a_lookup_wins() -> None:
    ac = AuthCache(60)
    ac.live = True

    def load_then_change() -> str:
        ac.clear()  # the NOTIFY lands while the old row is on its way back
        return "old permission"

    assert ac.cached(ac.grants, "k", load_then_change) == "old permission"
    assert ac.grants.get("k") == (False, None)
    assert ac.cached(ac.grants, "k", lambda: "new permission") == "new permission"


def test_single_flight_runs_one_check_per_key_at_a_time() -> None:
    ac = AuthCache(60)
    active, peak, results = [0], [0], []
    lock = threading.Lock()

    def slow_check() -> str:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return "ok"

    threads = [threading.Thread(target=lambda: results.append(ac.single_flight("k", slow_check))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["ok"] * 6 and peak[0] == 1
    assert ac._flights == {}


# --- the listener ---------------------------------------------------------------
class FakeConnection:
    """What listen_forever uses of a psycopg2 connection; notify() makes it
    readable. `answers` are the rows of a query, by a fragment of its SQL
    (default: the missing-trigger check's `missing`)."""

    def __init__(self, missing: list[str] | None = None, answers: dict[str, list] | None = None) -> None:
        self.rsock, self.wsock = socket.socketpair()
        self.rsock.setblocking(False)  # psycopg2's poll() never blocks
        self.missing = missing or []
        self.answers = answers or {}
        self.last = ""
        self.notifies: list[SimpleNamespace] = []
        self.pending: list[SimpleNamespace] = []
        self.executed: list[str] = []
        self.closed = False
        self.autocommit = False

    def fileno(self) -> int:
        return self.rsock.fileno()

    def cursor(self):
        conn = self

        class Cursor:
            def __enter__(self):
                return self

            def __exit__(self, *exc) -> None:
                pass

            def execute(self, sql: str, params=None) -> None:
                if conn.closed:
                    raise OSError("connection closed")
                conn.executed.append(sql)
                conn.last = sql

            def fetchall(self):
                for fragment, rows in conn.answers.items():
                    if fragment in conn.last:
                        return rows
                return [(t,) for t in conn.missing]

        return Cursor()

    def notify(self, payload: str, channel: str = authcache.CHANNEL) -> None:
        """A psycopg2 Notify: the auth triggers send the table's name."""
        self.pending.append(SimpleNamespace(pid=1, channel=channel, payload=payload))
        self.wsock.send(b"x")

    def poll(self) -> None:
        if self.closed:
            raise OSError("server closed the connection")
        try:
            self.rsock.recv(1024)
        except BlockingIOError:
            pass
        self.notifies.extend(self.pending)
        self.pending.clear()

    def close(self) -> None:
        self.closed = True


def wait_for(condition, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@contextlib.contextmanager
def listening(cache: AuthCache, poll: float = 0.05):
    """The cache's listener running in a thread for the block; stopped and
    joined after it."""
    stop = threading.Event()
    thread = threading.Thread(target=cache.listen_forever, args=(stop, poll), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(2)


def test_notifications_reach_the_caches_and_a_lost_connection_bypasses_them() -> None:
    first, second = FakeConnection(), FakeConnection()
    handed = [first, second]
    ac = AuthCache(60, connect=lambda: handed.pop(0))
    with listening(ac):
        wait_for(lambda: ac.live)
        assert f"LISTEN {authcache.CHANNEL}" in first.executed
        ac.cached(ac.users, "alice", lambda: "admin")
        assert ac.users.get("alice")[0]

        first.notify("users")  # an account changed somewhere
        wait_for(lambda: ac.notifications == 1)
        assert ac.users.get("alice") == (False, None)

        ac.cached(ac.grants, "k", lambda: ["EDIT"], list)
        first.closed = True  # PostgreSQL restarted
        first.wsock.send(b"x")
        wait_for(lambda: not handed)  # reconnected with the second connection
        wait_for(lambda: ac.live)
        assert ac.grants.get("k") == (False, None)  # nothing survives a reconnect
    assert not ac.live


def test_missing_triggers_keep_the_caches_off(caplog: pytest.LogCaptureFixture) -> None:
    conn = FakeConnection(missing=["roles", "users"])
    ac = AuthCache(60, connect=lambda: conn)
    stop = threading.Event()
    thread = threading.Thread(target=ac.listen_forever, args=(stop,), daemon=True)
    with caplog.at_level("WARNING"):
        thread.start()
        wait_for(lambda: conn.closed)
        stop.set()
        thread.join(2)
    assert not ac.live
    assert "roles, users" in caplog.text and "migrate" in caplog.text


# --- install(): in front of MLflow's auth module ----------------------------------
def fake_auth_module(ttl_cache: dict | None):
    calls = {"get_user": 0, "list_grants": 0, "get_run": 0, "authenticate": 0}

    class Store:
        def get_user(self, username):
            calls["get_user"] += 1
            return SimpleNamespace(id=7, username=username, is_admin=False)

        def list_grants(self, user_id, workspace, resource_types):
            calls["list_grants"] += 1
            return [("experiment", "1", "EDIT")]

    def run_requirement(run_id, action):
        calls["get_run"] += 1
        if run_id == "missing":
            return None
        experiment = ("experiment", "42")
        return experiment, [("experiment", "42", "read"), ("run", "*", action, (experiment,))]

    def requirement(rtype, rid, action, fallback_if_no_grant=()):
        return (rtype, rid, action, fallback_if_no_grant) if fallback_if_no_grant else (rtype, rid, action)

    def authenticate(username, password):  # like MLflow's: its TTL cache first
        if (username, password) in ttl_cache:
            return ttl_cache[(username, password)]
        calls["authenticate"] += 1
        time.sleep(0.05)
        user = SimpleNamespace(username=username)
        ttl_cache[(username, password)] = user
        return user

    module = SimpleNamespace(
        store=Store(),
        _run_requirement=run_requirement,
        Requirement=requirement,
        RESOURCE_TYPE_EXPERIMENT="experiment",
        RESOURCE_TYPE_RUN="run",
        _USER_AUTH_CACHE=ttl_cache,
        _USER_AUTH_CACHE_LOCK=threading.Lock(),
        _authenticate_cached=authenticate,
        _auth_cache_key=lambda u, p: (u, p),
    )
    return module, calls


def test_install_caches_users_grants_and_run_experiments() -> None:
    module, calls = fake_auth_module({})
    ac = AuthCache(60)
    ac.live = True
    authcache.install(module, ac)
    for _ in range(3):
        assert module.store.get_user("alice").id == 7
        assert module.store.list_grants(7, "default", {"experiment"}) == [("experiment", "1", "EDIT")]
        resolved = module._run_requirement("r1", "update")
    assert calls["get_user"] == calls["list_grants"] == calls["get_run"] == 1
    assert resolved == (
        ("experiment", "42"),
        [("experiment", "42", "read"), ("run", "*", "update", (("experiment", "42"),))],
    )
    assert module._run_requirement("missing", "read") is None
    assert module._run_requirement("missing", "read") is None
    assert calls["get_run"] == 3  # a missing run is asked about each time


def test_credential_checks_are_single_flight_and_cleared_with_the_rest() -> None:
    credentials: dict = {}
    module, calls = fake_auth_module(credentials)
    ac = AuthCache(60)
    authcache.install(module, ac)
    threads = [threading.Thread(target=module._authenticate_cached, args=("bob", "pw")) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls["authenticate"] == 1  # eight concurrent requests, one password hash
    assert credentials
    ac.clear()
    assert credentials == {}  # MLflow's credential cache goes with a notification


def test_ttl_zero_turns_the_caches_off() -> None:
    module, calls = fake_auth_module(None)
    original = module.store.get_user
    assert authcache.start(module, 0, connect=lambda: None) is None
    assert module.store.get_user == original


@pytest.mark.parametrize("missing", ["_run_requirement", "RESOURCE_TYPE_RUN", "_auth_cache_key"])
def test_an_mlflow_without_the_wrapped_lookups_is_left_untouched(missing: str) -> None:
    """An older MLflow (the upgrade test runs this image on 3.10) lacks some of
    what install() wraps: it must fail before patching anything."""
    module, _calls = fake_auth_module({})
    delattr(module, missing)
    before = dict(vars(module))
    store_before = (module.store.get_user, module.store.list_grants)
    with pytest.raises(AttributeError):
        authcache.install(module, AuthCache(60))
    assert vars(module) == before
    assert (module.store.get_user, module.store.list_grants) == store_before


def test_notifications_on_other_channels_go_to_their_callback_not_to_the_caches() -> None:
    conn = FakeConnection()
    ac = AuthCache(60, connect=lambda: conn)
    heard, connected, lost = [], [], []
    ac.channels["elsewhere"] = heard.append
    ac.on_connect.append(connected.append)
    ac.on_disconnect.append(lambda: lost.append(1))
    with listening(ac):
        wait_for(lambda: ac.live)
        assert connected == [conn]
        ac.cached(ac.users, "alice", lambda: "admin")
        conn.notify("10.0.0.7", channel="elsewhere")
        wait_for(lambda: heard == ["10.0.0.7"])
        assert ac.users.get("alice") == (True, "admin")  # not an auth change: caches kept
        assert ac.notifications == 0
        conn.notify("users")
        conn.notify("10.0.0.8", channel="elsewhere")
        # The listener may take the two in one poll or in two: wait for both.
        wait_for(lambda: ac.notifications == 1 and len(heard) == 2)
        assert heard == ["10.0.0.7", "10.0.0.8"]
        assert ac.users.get("alice") == (False, None)
    assert lost == [1]


def test_start_hooks_riders_on_before_the_listener_runs() -> None:
    module, _ = fake_auth_module({})
    order = []

    def connect():
        order.append("connect")
        raise OSError("no database here")

    def ride(cache: AuthCache) -> None:
        order.append("ride")
        cache.channels["elsewhere"] = lambda payload: None

    cache = authcache.start(module, 60, connect, (ride,))
    wait_for(lambda: "connect" in order)
    assert order[:2] == ["ride", "connect"] and "elsewhere" in cache.channels
