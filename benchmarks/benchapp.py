"""The Celery app the benchmarks run in a real ``celery worker``, configured by the environment.

BENCH_TAG        unique tag of a run: the queue is named after it, Redis keys start with ``bench:<tag>:``
BENCH_REDIS      Redis URL used for counters, and as broker unless BENCH_BROKER names another (default redis://127.0.0.1:6379/15)
BENCH_BROKER     broker URL (amqp://..., or filesystem:// with BENCH_FS_DIR the folder)
BENCH_DURABILITY DurableConfig durability ("full" or "relaxed")
BENCH_TIMER_GRACE, BENCH_LINGER, BENCH_ADAPTIVE_LINGER   DurableConfig timer_grace, recv_linger, adaptive_linger (s)
BENCH_DATABASE_URL, BENCH_PREFIX   the durable store (PostgreSQL) and its table prefix
BENCH_HORIZON, BENCH_SWEEP, BENCH_GRACE   DurableConfig horizon, sweep_interval ("none" = only at start), recovery_grace
BENCH_PREFETCH   worker_prefetch_multiplier (default 4, Celery's default)
BENCH_COUNT_SQL  "1": every pool process counts the SQL its durable store engine sends and adds the
                 counts to the Redis hash ``bench:<tag>:sql`` (a background thread flushes every 0.2 s)
BENCH_READY_FILE the worker's main process writes its pid there once it is ready
BENCH_PROFILE    a folder: each pool process and the main process's event loop thread profile
                 themselves (cProfile, CPU time) and dump there at exit (main-<pid>.prof for the latter)

The same three "3 trivial calls" workloads exist as a plain task, a chain and a durable workflow;
each ends by incrementing a Redis counter (the same cost for all three), so the driver can count
completions of the plain task and the chain without a result backend.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from typing import Any

import psycopg
import redis
import sqlalchemy as sa
from celery import Celery
from celery.signals import worker_process_init, worker_ready

from celery_durable import Durable

TAG = os.environ.get("BENCH_TAG", "bench")
REDIS_URL = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/15")
QUEUE = f"{TAG}-q"
SQL_KEY = f"bench:{TAG}:sql"

BROKER_URL = os.environ.get("BENCH_BROKER") or REDIS_URL
app = Celery("benchapp", broker=BROKER_URL)
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_prefetch_multiplier=int(os.environ.get("BENCH_PREFETCH", "4")),
    task_default_queue=QUEUE,
)
if BROKER_URL.startswith("filesystem://"):  # the embedded default: a folder as broker (BENCH_FS_DIR)
    _fs = os.environ["BENCH_FS_DIR"]
    app.conf.update(
        broker_transport_options={"data_folder_in": _fs, "data_folder_out": _fs, "polling_interval": 0.01},
        worker_enable_remote_control=False,  # the filesystem transport has no broadcast
    )

_sweep = os.environ.get("BENCH_SWEEP", "30")
durable = Durable(
    app,
    os.environ.get("BENCH_DATABASE_URL"),
    table_prefix=os.environ.get("BENCH_PREFIX", "bench_"),
    horizon=float(os.environ.get("BENCH_HORIZON", "300")),
    sweep_interval=None if _sweep == "none" else float(_sweep),
    recovery_grace=float(os.environ.get("BENCH_GRACE", "120")),
    **({"durability": "relaxed"} if os.environ.get("BENCH_DURABILITY") == "relaxed" else {}),
    **({"timer_grace": float(os.environ["BENCH_TIMER_GRACE"])} if os.environ.get("BENCH_TIMER_GRACE") else {}),
    **({"recv_linger": float(os.environ["BENCH_LINGER"])} if os.environ.get("BENCH_LINGER") else {}),
    **({"adaptive_linger": float(os.environ["BENCH_ADAPTIVE_LINGER"])} if os.environ.get("BENCH_ADAPTIVE_LINGER") else {}),
)

_redis: redis.Redis | None = None
_redis_pid = 0


def rds() -> redis.Redis:
    """One Redis client per process (a forked child makes its own)."""
    global _redis, _redis_pid
    if _redis is None or _redis_pid != os.getpid():
        _redis, _redis_pid = redis.Redis.from_url(REDIS_URL), os.getpid()
    return _redis


# -- SQL counting ---------------------------------------------------------------------------------
class SQLCounter:
    """Counts what a SQLAlchemy engine does.

    statements: cursor executions (each one round trip), of which autocommit: on an AUTOCOMMIT
    connection; begins / commits / rollbacks: transactions on non-autocommit connections (psycopg
    sends BEGIN and COMMIT as round trips of their own); pings: pool checkouts from an engine with
    ``pool_pre_ping`` (each one pings the server; the store's execution engine does not ping).
    """

    FIELDS = ("statements", "autocommit", "begins", "commits", "rollbacks", "pings")

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.statements: list[str] | None = None  # set to a list to also keep the SQL text

    def attach(self, engine: sa.Engine) -> SQLCounter:
        sa.event.listen(engine, "before_cursor_execute", self._on_execute)
        sa.event.listen(engine, "begin", lambda conn: self._tx(conn, "begins"))
        sa.event.listen(engine, "commit", lambda conn: self._tx(conn, "commits"))
        sa.event.listen(engine, "rollback", lambda conn: self._tx(conn, "rollbacks"))
        if getattr(engine.pool, "_pre_ping", False):  # a checkout from this pool pings the server
            sa.event.listen(engine, "checkout", lambda *a: self._bump("pings"))
        return self

    def _bump(self, name: str) -> None:
        self.counts[name] += 1

    @staticmethod
    def _autocommit(conn: Any) -> bool:
        return bool(conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT")

    def _tx(self, conn: Any, name: str) -> None:
        if not self._autocommit(conn):  # SQLAlchemy fires these on AUTOCOMMIT connections too
            self.counts[name] += 1

    def _on_execute(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.counts["statements"] += 1
        if self._autocommit(conn):
            self.counts["autocommit"] += 1
        if self.statements is not None:
            self.statements.append(statement)

    def snapshot(self) -> dict[str, int]:
        return {f: self.counts[f] for f in self.FIELDS}


def _flush_loop(counter: SQLCounter) -> None:
    sent = dict.fromkeys(SQLCounter.FIELDS, 0)
    while True:
        time.sleep(0.2)
        now = counter.snapshot()
        raw = int(getattr(type(durable.store), "raw_statements", 0))  # PostgreSQL's raw hot path (pg_fast.py)
        now["statements"] += raw
        now["autocommit"] += raw
        delta = {f: now[f] - sent[f] for f in SQLCounter.FIELDS if now[f] != sent[f]}
        if not delta:
            continue
        try:
            pipe = rds().pipeline()
            for field, value in delta.items():
                pipe.hincrby(SQL_KEY, field, value)
            pipe.execute()
            sent.update({f: now[f] for f in delta})
        except Exception:
            pass  # counted again at the next flush


@worker_process_init.connect
def _count_sql_in_child(**_: Any) -> None:
    if os.environ.get("BENCH_COUNT_SQL") == "1":
        counter = SQLCounter().attach(durable.store.engine)
        exec_engine = getattr(durable.store, "exec_engine", None)  # PostgreSQL: the executions' own pool
        if exec_engine is not None:
            counter.attach(exec_engine)
        threading.Thread(target=_flush_loop, args=(counter,), name="bench-sql-flush", daemon=True).start()


def _profile_until(signal: Any, name: str) -> None:
    """BENCH_PROFILE=<dir>: profile this thread (CPU time) until *signal*, then dump to <dir>/<name>.prof."""
    folder = os.environ.get("BENCH_PROFILE")
    if folder:
        import cProfile

        prof = cProfile.Profile(time.process_time)
        prof.enable()

        def dump(**_: Any) -> None:
            prof.disable()
            prof.dump_stats(f"{folder}/{name}.prof")

        signal.connect(dump, weak=False)


@worker_process_init.connect
def _profile_child(**_: Any) -> None:
    """Each pool process profiles itself, dumped at its exit."""
    from celery.signals import worker_process_shutdown

    _profile_until(worker_process_shutdown, str(os.getpid()))


@worker_ready.connect
def _profile_main(**_: Any) -> None:
    """The worker's main thread (kombu's event loop, the thread this runs in), dumped at shutdown."""
    from celery.signals import worker_shutdown

    _profile_until(worker_shutdown, f"main-{os.getpid()}")


@worker_ready.connect
def _write_ready_file(**_: Any) -> None:
    path = os.environ.get("BENCH_READY_FILE")
    if path:
        with open(path, "w") as f:
            f.write(str(os.getpid()))


# -- the "3 trivial calls" workloads --------------------------------------------------------------
def inc(x: int) -> int:
    return x + 1


@app.task(name="bench.plain3")
def plain3(x: int, key: str) -> int:
    """(a) a plain Celery task making 3 trivial calls."""
    x = inc(inc(inc(x)))
    rds().incr(key)
    return x


@app.task(name="bench.link")
def link(x: int) -> int:
    """(b) one link of a 3-task chain: one trivial call."""
    return inc(x)


@app.task(name="bench.link_last")
def link_last(x: int, key: str) -> int:
    """(b) the last link of the chain."""
    x = inc(x)
    rds().incr(key)
    return x


@durable.step(name="bench.inc")
def inc_step(x: int) -> int:
    return x + 1


@durable.workflow(name="bench.wf3")
def wf3(x: int, key: str) -> int:
    """(c) a durable workflow making 3 trivial step calls."""
    x = inc_step(inc_step(inc_step(x)))
    rds().incr(key)  # not a step: the same side effect as (a) and (b); no replay happens in the benchmark
    return x


# -- messaging workloads ----------------------------------------------------------------------------
@durable.step(name="bench.stamp")
def stamp() -> float:
    """The wall-clock time right after the preceding recv returned (its checkpoint keeps it)."""
    return time.time()


@durable.workflow(name="bench.pinger")
def pinger(count: int, timeout: float) -> int:
    """recv then stamp, *count* times: recv #i is step 2*i, its stamp is step 2*i + 1."""
    for _ in range(count):
        durable.recv("ping", timeout=timeout)
        stamp()
    return count


@durable.workflow(name="bench.waiter")
def waiter(timeout: float) -> Any:
    """Wait for one message on topic "go"."""
    return durable.recv("go", timeout=timeout, default="<timeout>")


# -- (d) the floor: the same checkpoints written by hand -------------------------------------------
#: Tables of the hand-written kind (created by bench_workflows next to the store's own).
FLOOR_TABLES = (
    "CREATE TABLE IF NOT EXISTS bench_floor_wf (id text PRIMARY KEY, status text NOT NULL, inputs text NOT NULL, "
    "output text, executions int NOT NULL DEFAULT 0, created_at float8 NOT NULL)",
    "CREATE TABLE IF NOT EXISTS bench_floor_steps (wf text NOT NULL, step int NOT NULL, output text, "
    "at float8 NOT NULL, PRIMARY KEY (wf, step))",
    "CREATE TABLE IF NOT EXISTS bench_floor_msgs (seq bigserial PRIMARY KEY, dest text NOT NULL, payload text NOT NULL, "
    "consumed_at float8)",
    "CREATE INDEX IF NOT EXISTS bench_floor_msgs_queue ON bench_floor_msgs (dest, seq) WHERE consumed_at IS NULL",
)
_pg = threading.local()


def pg() -> psycopg.Connection[Any]:
    """One autocommit psycopg connection per process and thread to the benchmark's database (each commit flushed)."""
    conn: psycopg.Connection[Any] | None = getattr(_pg, "conn", None)
    if conn is None or getattr(_pg, "pid", 0) != os.getpid():
        url = os.environ["BENCH_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
        conn = _pg.conn = psycopg.connect(url, autocommit=True)
        _pg.pid = os.getpid()
    return conn


def floor_start(x: int, key: str) -> None:
    """(d) producer side: insert the workflow row (flushed), then publish the task, as ``start`` does."""
    wid = os.urandom(8).hex()
    pg().execute(
        "INSERT INTO bench_floor_wf (id, status, inputs, created_at) VALUES (%s, 'PENDING', %s, %s)",
        (wid, json.dumps([x, key]), time.time()),
        prepare=True,
    )
    floor3.delay(wid)


@app.task(name="bench.floor3")
def floor3(wid: str) -> int:
    """(d) a plain task writing what a durable execution writes, by hand: claim, 3 checkpoints, finish.

    Six rows/updates like the store's (the claim's commit not waiting for its flush, as the store's
    does), with none of the rest: no lock, no ticket, no replay, no engine, no validation. It is the
    least a Celery task that checkpoints each step in PostgreSQL can cost: the floor for (c).
    """
    conn = pg()
    row = conn.execute(
        "WITH sc AS (SELECT set_config('synchronous_commit', 'off', true)) UPDATE bench_floor_wf "
        "SET status = 'RUNNING', executions = executions + 1 FROM sc WHERE id = %s RETURNING inputs",
        (wid,),
        prepare=True,
    ).fetchone()
    assert row is not None
    x, key = json.loads(row[0])
    for step in range(3):
        x = inc(x)
        conn.execute(
            "INSERT INTO bench_floor_steps (wf, step, output, at) VALUES (%s, %s, %s, %s)",
            (wid, step, json.dumps(x), time.time()),
            prepare=True,
        )
    rds().incr(key)
    conn.execute("UPDATE bench_floor_wf SET status = 'SUCCESS', output = %s WHERE id = %s", (json.dumps(x), wid), prepare=True)
    return int(x)


def floor_wait(wids: list[str]) -> None:
    """(b') rows of workflows already WAITING (the wake-up is what is measured, not the start)."""
    with pg().cursor() as cur:
        cur.executemany(
            "INSERT INTO bench_floor_wf (id, status, inputs, created_at) VALUES (%s, 'WAITING', '[]', %s)",
            [(wid, time.time()) for wid in wids],
        )


def floor_send(wid: str, payload: str) -> None:
    """(b') a send by hand: store the message and wake a WAITING row in one flushed statement, then publish."""
    row = pg().execute(
        "WITH ins AS (INSERT INTO bench_floor_msgs (dest, payload) VALUES (%s, %s) RETURNING 1), "
        "wk AS (UPDATE bench_floor_wf SET status = 'PENDING' WHERE id = %s AND status = 'WAITING' RETURNING 1) "
        "SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM wk)",
        (wid, payload, wid),
        prepare=True,
    ).fetchone()
    if row is not None and row[1]:
        floor_wake.delay(wid)


@app.task(name="bench.floor_wake")
def floor_wake(wid: str) -> str:
    """(b') a wake-up by hand: claim, take the oldest message with its checkpoint, finish (as the store does)."""
    conn = pg()
    conn.execute(
        "WITH sc AS (SELECT set_config('synchronous_commit', 'off', true)) UPDATE bench_floor_wf "
        "SET status = 'RUNNING', executions = executions + 1 FROM sc WHERE id = %s",
        (wid,),
        prepare=True,
    )
    row = conn.execute(
        "WITH m AS (SELECT seq, payload FROM bench_floor_msgs WHERE dest = %s AND consumed_at IS NULL "
        "ORDER BY seq LIMIT 1 FOR UPDATE), u AS (UPDATE bench_floor_msgs AS b SET consumed_at = %s FROM m "
        "WHERE b.seq = m.seq RETURNING 1), ins AS (INSERT INTO bench_floor_steps (wf, step, output, at) "
        "SELECT %s, 0, payload, %s FROM m RETURNING 1) SELECT payload, (SELECT count(*) FROM u), "
        "(SELECT count(*) FROM ins) FROM m",
        (wid, time.time(), wid, time.time()),
        prepare=True,
    ).fetchone()
    payload = row[0] if row is not None else ""
    conn.execute(
        "UPDATE bench_floor_wf SET status = 'SUCCESS', output = %s WHERE id = %s", (payload, wid), prepare=True
    )
    return str(payload)


@app.task(name="bench.hop")
def hop(key: str) -> None:
    """A plain task that records when it started: the broker-to-task hop a wake-up through the broker pays too."""
    rds().rpush(key, time.time())
