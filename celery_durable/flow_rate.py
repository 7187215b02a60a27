"""Rate limits across the whole cluster: ``@durable.step(rate_limit="20/s")`` and the same on workflows.

An engine extension: it uses the workflow context only through
:class:`~celery_durable.extension.WorkflowContextProtocol`. No Celery, no SQLAlchemy.

A limit of N per period (Celery's format: ``"N/s"``, ``"N/m"``, ``"N/h"``) spaces the starts it
allows ``period / N`` apart, like Celery's own ``rate_limit`` does within one worker, but for every
worker and host at once: each call reserves its start with one atomic statement
(:meth:`Store.take_turn <celery_durable.store.Store.take_turn>`), so no window of one period holds
more than N starts. ``rate_key`` (a parameter name, or a callable of the arguments) makes it one
limit per value.

Invariants:

* **A turn is taken before the step runs, and only for a step with no checkpoint**: a replay of a
  step that finished takes none. A wait of more than :data:`IN_PLACE_LIMIT` seconds is recorded
  (wait kind ``"rate"``, its deadline :data:`WAKE_AHEAD` before the reserved start) and leaves the worker, like a retry's
  backoff; the execution woken for it finds that wait on the workflow row and uses the turn it
  reserved, without taking another. A step cut off by a crash after its turn takes a new one.
* **One turn per call**: a step with ``retries`` takes its turn before its first attempt; its
  retries take none (their pauses already space them).
* **A workflow's turn is taken by its first execution** (its execution count is 1) before its body
  runs, with the same wait; later executions (woken from a wait, recovered after a crash, resumed,
  forked) never take one. It takes no step id, so adding a rate limit to a workflow does not change
  the histories of the ones in flight.
* **No cost without a limit**: nothing here runs for a step or a workflow that has none.
"""

from __future__ import annotations

import inspect
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError, InvalidArgument
from .validation import MAX_NAME_LENGTH

if TYPE_CHECKING:
    from .extension import WorkflowContextProtocol

log = logging.getLogger("celery_durable")

#: A wait for a turn of at most this many seconds sleeps in the worker; a longer one leaves it.
IN_PLACE_LIMIT = 1.0
#: A wait that leaves the worker is woken this long before its turn and sleeps the rest in place, so it
#: starts on time instead of one broker and store round trip late. (Its recorded deadline is this early.)
WAKE_AHEAD = 0.1
#: The wait kind recorded on the workflow row while it waits for its turn.
RATE_WAIT = "rate"
#: The ``wait_step`` of a workflow waiting for its own admission (no step id is taken for it).
ADMISSION_STEP = -1

_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*/\s*([smh])\s*")


def parse_rate(rate: Any, what: str = "rate_limit") -> float:
    """The interval in seconds between two starts allowed by *rate* (``"N/s"``, ``"N/m"``, ``"N/h"``,
    or a number: N per second, as Celery reads it). Raises ``ConfigurationError`` naming a bad value."""
    if isinstance(rate, bool):
        raise ConfigurationError(f"{what} must look like '20/s', '10/m' or '100/h', got {rate!r}")
    if isinstance(rate, (int, float)):
        count, period = float(rate), 1.0
    elif isinstance(rate, str) and (found := _RATE.fullmatch(rate)) is not None:
        count, period = float(found.group(1)), _PERIODS[found.group(2)]
    else:
        raise ConfigurationError(f"{what} must look like '20/s', '10/m' or '100/h', got {rate!r}")
    if not math.isfinite(count) or count <= 0:
        raise ConfigurationError(f"{what} must allow more than 0 calls per period, got {rate!r}")
    return period / count


@dataclass(frozen=True)
class RateLimit:
    """A rate limit as declared on a step or a workflow: its store name, its interval and how to find the key."""

    name: str  # "step:<step name>" or "workflow:<workflow name>"
    interval: float  # seconds between two starts
    rate: str  # as declared, for messages
    key_of: Callable[[tuple[Any, ...], dict[str, Any]], str] | None = None

    def key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The key value of a call with *args*/*kwargs* ('' when the limit has no ``rate_key``)."""
        if self.key_of is None:
            return ""
        return self.key_of(args, kwargs)


def declare(kind: str, name: str, fn: Callable[..., Any], rate_limit: Any, rate_key: Any) -> RateLimit | None:
    """The :class:`RateLimit` of a step or workflow *name* (*kind*), or None without ``rate_limit``.

    *rate_key* is the name of a parameter of *fn* or a callable taking the same arguments; it is
    checked now, so a typo fails at import, not at the first call.
    """
    if rate_limit is None:
        if rate_key is not None:
            raise ConfigurationError(f"rate_key={rate_key!r} on {kind} {name!r} needs a rate_limit")
        return None
    interval = parse_rate(rate_limit)
    return RateLimit(f"{kind}:{name}", interval, str(rate_limit), _key_function(kind, name, fn, rate_key))


def _key_function(
    kind: str, name: str, fn: Callable[..., Any], rate_key: Any
) -> Callable[[tuple[Any, ...], dict[str, Any]], str] | None:
    if rate_key is None:
        return None
    if callable(rate_key):
        key_fn = rate_key

        def call_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
            return _key_text(kind, name, key_fn(*args, **kwargs))

        return call_key
    if not isinstance(rate_key, str):
        raise ConfigurationError(f"rate_key of {kind} {name!r} must be a parameter name or a callable, got {rate_key!r}")
    signature = inspect.signature(fn)
    if rate_key not in signature.parameters:
        raise ConfigurationError(
            f"rate_key={rate_key!r}: {kind} {name!r} has no parameter of that name "
            f"(its parameters: {', '.join(signature.parameters) or 'none'})"
        )
    parameter = rate_key

    def param_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidArgument(f"{kind} {name!r} called with arguments that do not fit it: {exc}") from None
        bound.apply_defaults()
        return _key_text(kind, name, bound.arguments[parameter])

    return param_key


def _key_text(kind: str, name: str, value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_NAME_LENGTH:
        raise InvalidArgument(
            f"the rate_key value of {kind} {name!r} is {len(text)} characters, over the limit of {MAX_NAME_LENGTH}"
        )
    return text


# -- the engine side ------------------------------------------------------------------------------------
def step_turn(ctx: WorkflowContextProtocol, step_id: int, name: str, limit: RateLimit, key: str) -> None:
    """Wait for step *step_id*'s turn of *limit* (it has no checkpoint; it is about to run)."""
    record = ctx.workflow
    if record.wait_kind == RATE_WAIT and record.wait_step == step_id and record.deadline is not None:
        _wait_until(ctx, step_id, name, record.deadline + WAKE_AHEAD)  # woken for the turn it reserved: no new one
        return
    if record.attempt_step == step_id and record.attempts:
        return  # its attempts started already (retries.py): the turn was taken before the first one
    _take_and_wait(ctx, step_id, name, limit, key)


def admit_workflow(ctx: WorkflowContextProtocol, limit: RateLimit, key: str) -> None:
    """Wait for the workflow's turn of *limit*, before its body runs, once in its life (module doc)."""
    record = ctx.workflow
    if record.wait_kind == RATE_WAIT and record.wait_step == ADMISSION_STEP and record.deadline is not None:
        _wait_until(ctx, ADMISSION_STEP, record.name, record.deadline + WAKE_AHEAD)
        return
    if record.executions != 1:
        return
    _take_and_wait(ctx, ADMISSION_STEP, record.name, limit, key)


def _take_and_wait(ctx: WorkflowContextProtocol, step_id: int, name: str, limit: RateLimit, key: str) -> None:
    store, lease = ctx.store, ctx.lease
    now = ctx.clock()
    turn = ctx.store_call(
        lambda: store.take_turn(limit.name, key, limit.interval, now, lease), f"the rate limit of {name!r}"
    )
    _wait_until(ctx, step_id, name, turn)


def _wait_until(ctx: WorkflowContextProtocol, step_id: int, name: str, until: float) -> None:
    """Sleep in place until *until* when that is at most :data:`IN_PLACE_LIMIT` away; otherwise record
    the wait and leave the worker (``Suspend``)."""
    now = ctx.clock()
    if until - now <= IN_PLACE_LIMIT:
        if until > now:
            ctx.pause(until - now)
        return
    store, lease, horizon = ctx.store, ctx.lease, ctx.config.horizon
    wake = until - WAKE_AHEAD
    result = ctx.store_call(
        lambda: store.wait_rate(lease, step_id, name, wake, now, horizon), f"the rate limit wait of {name!r}"
    )
    log.debug("%s of %s waits %.3g s for its turn", name, ctx.workflow_id, until - now)
    ctx.suspend(result.dispatch, {"wait": RATE_WAIT, "step": step_id, "name": name, "until": until})
