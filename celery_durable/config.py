"""One configuration object for everything a :class:`~celery_durable.Durable` can be told."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigurationError


@dataclass(frozen=True)
class DurableConfig:
    """Settings of a :class:`~celery_durable.Durable`; pass any of them as keyword arguments to it."""

    #: Queue for workflow task messages; ``None`` uses the app's routing (``task_routes``, default queue).
    queue: str | None = None
    #: "json" (default) or "pickle" (explicit opt-in: only for stores nobody untrusted can write).
    serializer: str = "json"
    #: Prefix of every table, so they sit beside the application's own.
    table_prefix: str = "durable_"
    #: Create or upgrade the schema on first use. Turn off to run ``celery-durable migrate`` yourself.
    auto_migrate: bool = True
    #: Longest countdown a timer message may use, in seconds. Waits with a farther deadline are kept
    #: in the store and armed by the sweep when they come within the horizon. Keep it well below the
    #: broker's redelivery limits (Redis ``visibility_timeout`` of *every* app on that database,
    #: RabbitMQ ``consumer_timeout``).
    horizon: float = 300.0
    #: Seconds between two sweeps run by each worker's main process; ``None`` turns the worker
    #: sweep off (run ``durable.recover()`` from beat instead).
    sweep_interval: float | None = 30.0
    #: A queued message or timer overdue by this many seconds is taken as lost and published again.
    #: A duplicate this may create is harmless (its ticket is stale), only wasted work.
    recovery_grace: float = 120.0
    #: Countdown before a delivery that found the workflow held by another live execution (or the
    #: store unreachable) tries again; it doubles on each further try, up to 60 s.
    busy_backoff: float = 0.02
    #: Largest serialized message or event payload, in bytes.
    max_payload: int = 256 * 1024
    #: Extra keyword arguments for ``sqlalchemy.create_engine``.
    engine_options: dict[str, Any] = field(default_factory=dict)
    #: "full" (default): every checkpoint's commit waits for its WAL flush, so a finished step survives
    #: a crash of the worker and of PostgreSQL. "relaxed" (opt-in, PostgreSQL): step checkpoints commit
    #: without waiting for the flush (``synchronous_commit=off`` for that commit only); the start, the
    #: finish, sends, received messages, events and waits keep waiting for it. A PostgreSQL crash (not a
    #: worker crash) can then forget the checkpoints of steps that finished after the workflow's last
    #: flushed write (at most ~3 x ``wal_writer_delay``, 0.6 s by default): those steps run again. Never a
    #: send or a received message: their own flush also flushes every earlier commit (the WAL is written
    #: in order). No effect on SQLite (its ``synchronous=NORMAL`` never waits for the disk per commit).
    durability: str = "full"
    #: Seconds a wait's timer is kept in the worker process before it is published, and then only if the
    #: workflow still waits (see timers.py): a wait that a message ends within it leaves no countdown
    #: message held in a worker. 0 publishes every timer at once.
    timer_grace: float = 1.0
    #: Seconds a ``recv`` that finds no message keeps its worker slot and waits in place for one (PostgreSQL:
    #: LISTEN/NOTIFY) before it records the wait and leaves. A reply within it continues the execution
    #: without a broker hop and without replaying the history. 0 (default) leaves at once; it pays for
    #: request/response loops whose replies come within milliseconds, and costs a held slot otherwise.
    recv_linger: float = 0.0
    #: Seconds a ``recv`` lingers as above, but only while replies come fast: when the wait the execution
    #: was woken from was answered within this time (or the previous linger caught its message). A
    #: request/response loop then continues in place after its first wake-up; a workflow whose replies
    #: come later than this (or that never waited) leaves at once, as with no linger, and one linger
    #: that catches nothing turns it off again. 0 turns it off. PostgreSQL only.
    adaptive_linger: float = 0.05

    def __post_init__(self) -> None:
        for name in ("horizon", "recovery_grace", "busy_backoff"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")
        if self.sweep_interval is not None and (
            isinstance(self.sweep_interval, bool)
            or not isinstance(self.sweep_interval, (int, float))
            or self.sweep_interval <= 0
        ):
            raise ConfigurationError(
                f"sweep_interval must be a positive number of seconds or None, got {self.sweep_interval!r}"
            )
        if isinstance(self.timer_grace, bool) or not isinstance(self.timer_grace, (int, float)) or not (
            0 <= self.timer_grace < math.inf
        ):
            raise ConfigurationError(f"timer_grace must be a number of seconds >= 0, got {self.timer_grace!r}")
        if isinstance(self.recv_linger, bool) or not isinstance(self.recv_linger, (int, float)) or not (
            0 <= self.recv_linger <= 60
        ):
            raise ConfigurationError(f"recv_linger must be a number of seconds from 0 to 60, got {self.recv_linger!r}")
        if isinstance(self.adaptive_linger, bool) or not isinstance(self.adaptive_linger, (int, float)) or not (
            0 <= self.adaptive_linger <= 60
        ):
            raise ConfigurationError(
                f"adaptive_linger must be a number of seconds from 0 to 60, got {self.adaptive_linger!r}"
            )
        if self.durability not in ("full", "relaxed"):
            raise ConfigurationError(f"durability must be 'full' or 'relaxed', got {self.durability!r}")
        if isinstance(self.max_payload, bool) or not isinstance(self.max_payload, int) or self.max_payload <= 0:
            raise ConfigurationError(f"max_payload must be a positive number of bytes, got {self.max_payload!r}")

    @classmethod
    def from_options(cls, base: DurableConfig | None, options: dict[str, Any]) -> DurableConfig:
        """Return *base* (or the defaults) with *options* applied; an unknown option is an error that names it."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigurationError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return dataclasses.replace(base or cls(), **options)
