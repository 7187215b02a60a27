"""Debouncing: ``wf.debounce(key, *args, delay=..., max_delay=None, **kwargs)`` and ``durable.debounce(name, key, ...)``.

Calls with the same (workflow name, key) within *delay* of each other collapse into one workflow, a
**round**, that starts *delay* after the last call with the last call's arguments; *max_delay*
(counted from the round's first call) bounds how far a steady stream of calls pushes it back. Every
call of a round returns the same handle; once the round's workflow has started, the next call opens a
new round.

No Celery, no SQLAlchemy: the store does the work in one transaction per call
(:meth:`Store.debounce <celery_durable.store.Store.debounce>`, see store/sql_debounce.py). A waiting
round is a WAITING workflow (wait kind ``"debounce"``) whose deadline is its start time, so it holds
no worker slot and is started by the ordinary timer machinery (re-armed and recovered by the sweep).
Nothing here runs for a workflow that is not debounced, and nothing runs in the engine at all: the
round's workflow starts like any woken workflow, its first execution reading the stored inputs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import core
from . import validation as v
from .errors import InvalidArgument
from .serialization import check_stored_text
from .store import WorkflowRecord

if TYPE_CHECKING:
    from .management import Management

#: The wait kind of a round's workflow until it starts.
DEBOUNCE_WAIT = "debounce"


def check_delays(delay: Any, max_delay: Any) -> tuple[float, float | None]:
    """Check *delay* (seconds or a timedelta, required) and *max_delay* (the same, or None); max_delay >= delay."""
    if delay is None:
        raise InvalidArgument("debounce needs delay= (seconds, or a timedelta): how long after the last call the workflow starts")
    seconds = v.check_duration(delay, "delay")
    if max_delay is None:
        return seconds, None
    bound = v.check_duration(max_delay, "max_delay")
    if bound < seconds:
        raise InvalidArgument(f"max_delay ({bound:g} s) must be at least delay ({seconds:g} s), or None for no bound")
    return seconds, bound


def debounce(
    management: Management,
    name: str,
    key: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    delay: Any,
    max_delay: Any,
    queue: str | None,
    version: str | None,
    timeout: float | None,
) -> WorkflowRecord:
    """Record one debounced call of workflow *name* with *key*; publish its round's new timer; return the round.

    Outside workflow bodies only (a body's calls must be checkpoints): call it from a step there.
    """
    if core.workflow_body() is not None:
        raise InvalidArgument(
            f"debounce of {name!r} cannot be called in a workflow body (it is not a checkpoint); call it from a step"
        )
    core.check_id(name, "workflow name")
    key = core.check_id(key, "debounce key")
    seconds, bound = check_delays(delay, max_delay)
    timeout_seconds = core.check_timeout(timeout)
    queue = v.check_queue(queue)
    try:
        inputs = check_stored_text(
            management.serializer.dumps({"args": list(args), "kwargs": kwargs}), "the arguments"
        )
    except Exception as exc:
        raise type(exc)(f"cannot debounce workflow {name!r}: its arguments are not serializable: {exc}") from None
    engine = management.engine
    now = engine.clock()
    record, timer, _opened = management.store.debounce(
        name,
        key,
        inputs,
        queue,
        now,
        seconds,
        bound,
        management.config.horizon,
        version=version,
        # Counted from the start its round's first call planned (now + delay): a round pushed back later
        # has that much less to run. Fixed at the round's first call, like a start's.
        timeout_at=None if timeout_seconds is None else now + seconds + timeout_seconds,
    )
    if timer is not None:
        engine.publish_all([timer])
    return record
