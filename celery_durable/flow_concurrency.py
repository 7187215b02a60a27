"""Concurrency limits, engine side: ``@durable.workflow(concurrency=N, concurrency_key=..., limit_strategy=...)``.

No Celery, no SQLAlchemy. At most N workflows of a name (per key value, with ``concurrency_key``) are
*in flight*: admitted and not finished. A workflow waiting in ``recv``/``sleep``/a join keeps its slot;
one over the limit is stored ENQUEUED and holds no worker and no task message until it is admitted.
The store keeps the invariant (sql_concurrency.py); this module computes the key and decides where
admission happens:

* **A start through the workflow** (``wf.start``, ``delay``, ``apply_async``, ``Durable`` has the
  code): the key is computed from the arguments at once and admission is decided with the insert, in
  one transaction. ``cancel_newest`` raises :class:`~celery_durable.errors.ConcurrencyLimitExceeded`
  in the caller and stores nothing.
* **A start by name** (``DurableClient.start``, ``app.send_task``, a canvas, a child started inside a
  workflow, a ``resume``, a ``fork``): whoever stored it may not have the code, so the workflow's
  *first execution* decides, before the body runs (one store call, under the workflow's lock): it is
  admitted and runs on, or becomes ENQUEUED and leaves the worker (its message goes stale; admission
  sends the next), or, with ``cancel_newest`` over the limit, ends in ERROR with
  ``ConcurrencyLimitExceeded`` (it was stored before anyone could refuse it). The rule is "the first
  execution decides" rather than "the producer decides" because only a worker is sure to have the
  workflow's code and its options; it costs one extra store call for those starts only.

A workflow without a limit runs none of this: the decorator does not wrap it.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import core
from .errors import ConcurrencyLimitExceeded, InvalidArgument
from .extension import WorkflowContextProtocol
from .store import FlowLimit
from .store.records import LIMIT_STRATEGIES
from .validation import MAX_NAME_LENGTH, shown

KeyFunction = Callable[..., str]


@dataclass(frozen=True)
class Concurrency:
    """The concurrency limit of one workflow: at most *limit* in flight per value of *key* (``None``: per name)."""

    workflow: str
    limit: int
    key: str | KeyFunction | None
    strategy: str
    signature: inspect.Signature

    def key_of(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The store's key for a start with *args*/*kwargs*: the workflow's name, and the key's value."""
        if self.key is None:
            return self.workflow
        if callable(self.key):
            value = self.key(*args, **kwargs)
            if not isinstance(value, str):
                raise InvalidArgument(
                    f"the concurrency_key function of workflow {self.workflow!r} must return a str, "
                    f"got {shown(value)}"
                )
        else:
            try:
                bound = self.signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise InvalidArgument(f"cannot start workflow {self.workflow!r}: {exc}") from None
            bound.apply_defaults()
            value = str(bound.arguments[self.key])
        full = f"{self.workflow}[{value}]"
        if len(full) <= MAX_NAME_LENGTH:
            return full
        return f"{self.workflow}[#{hashlib.sha256(value.encode()).hexdigest()}]"[-MAX_NAME_LENGTH:]

    def flow(self, args: tuple[Any, ...], kwargs: dict[str, Any], priority: int | None = None) -> FlowLimit:
        return FlowLimit(self.key_of(args, kwargs), self.limit, self.strategy, priority or 0)


def check_priority(priority: Any) -> int | None:
    """``start(..., priority=)`` of a workflow with a concurrency limit: an int, lower is admitted first."""
    if priority is None:
        return None
    if isinstance(priority, bool) or not isinstance(priority, int) or abs(priority) > 2**31 - 1:
        raise InvalidArgument(f"priority must be an int (lower is admitted first), got {shown(priority)}")
    return priority


def concurrency(
    name: str, fn: Callable[..., Any], limit: Any, key: Any, strategy: Any
) -> Concurrency | None:
    """Check the decorator's options; return the workflow's limit, or ``None`` when it has none."""
    if limit is None:
        if key is not None or strategy is not None:
            raise InvalidArgument(
                f"workflow {name!r}: concurrency_key and limit_strategy need concurrency=N (how many at once)"
            )
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidArgument(f"workflow {name!r}: concurrency must be an int >= 1, got {shown(limit)}")
    strategy = "queue" if strategy is None else strategy
    if strategy not in LIMIT_STRATEGIES:
        raise InvalidArgument(
            f"workflow {name!r}: limit_strategy must be one of {', '.join(map(repr, LIMIT_STRATEGIES))}, "
            f"got {shown(strategy)}"
        )
    signature = inspect.signature(fn)
    if isinstance(key, str):
        if key not in signature.parameters:
            raise InvalidArgument(
                f"workflow {name!r}: concurrency_key {key!r} is not a parameter of {fn.__qualname__}"
                f"{signature} (name one, or pass a function (*args, **kwargs) -> str)"
            )
    elif key is not None and not callable(key):
        raise InvalidArgument(
            f"workflow {name!r}: concurrency_key must be a parameter name or a function, got {shown(key)}"
        )
    return Concurrency(name, limit, key, strategy, signature)


def admitting(fn: Callable[..., Any], spec: Concurrency) -> Callable[..., Any]:
    """Wrap the body *fn*: a first execution that was not admitted yet goes through admission first."""

    @functools.wraps(fn)
    def body(*args: Any, **kwargs: Any) -> Any:
        ctx = core.workflow_body()
        if ctx is not None and ctx.workflow.flow_key is None:
            admit(ctx, spec.flow(args, kwargs))
        return fn(*args, **kwargs)

    return body


def admit(ctx: WorkflowContextProtocol, flow: FlowLimit) -> None:
    """Admit the workflow of *ctx*, started without its limit, or leave the worker until it is admitted."""
    verdict = ctx.store_call(lambda: ctx.store.admit_started(ctx.lease, flow, ctx.clock()), "the admission")
    if verdict == "enqueued":
        ctx.suspend(None, {"wait": "admission", "key": flow.key})
    if verdict == "refused":
        raise ConcurrencyLimitExceeded(
            f"workflow {ctx.workflow_id!r} was refused: {flow.limit} of {flow.limit} already run for "
            f"concurrency key {flow.key!r} (limit_strategy='cancel_newest')"
        )
