"""Durable step retries: the policy, and the attempt loop the engine runs for a step that has one.

An engine extension: it uses the workflow context only through
:class:`~celery_durable.extension.WorkflowContextProtocol`.

A step with ``retries=N`` may start N + 1 attempts. Waits between attempts leave the worker
the way a ``recv`` wait does: a wait of kind ``"retry"`` is recorded with its deadline, the task
ends with a Celery retry whose countdown is that deadline, and the next execution replays the
workflow up to this step and starts the next attempt. Only pauses of at most
:data:`IN_PLACE_LIMIT` seconds sleep in the worker.

Invariants:

* **Attempt k is written before attempt k runs** (``attempt_step``/``attempts`` on the workflow
  row). So a crash during attempt k is seen by the next execution as "k attempts started", and it
  runs attempt k + 1: a crash never resets the count and never repeats an attempt number. A step
  that kills its worker (out of memory, segfault) therefore runs at most N + 1 times, like one
  that raises. When the last attempt was the one cut off, the step fails with
  :class:`~celery_durable.errors.StepAttemptLost`.
* **One counter is enough.** Steps run one at a time and a step's attempts all happen before
  the next durable operation, so the pair (``attempt_step``, ``attempts``) only ever describes
  the step in progress; it is read only when that step id has no checkpoint yet.
* **No write for steps without retries**: the hot path of a plain step is unchanged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError, StepAttemptLost

if TYPE_CHECKING:
    from .extension import WorkflowContextProtocol

log = logging.getLogger("celery_durable")

#: A pause between attempts of at most this many seconds sleeps in the worker; a longer one leaves it.
IN_PLACE_LIMIT = 1.0
#: The wait kind recorded on the workflow row while a step waits for its next attempt.
RETRY_WAIT = "retry"


@dataclass(frozen=True)
class RetryPolicy:
    """How often a raising step is tried again, and how long to wait before each new attempt.

    The pause after attempt *k* (1-based) is ``min(interval * backoff ** (k - 1), max_interval)``.
    Only errors that are instances of *retry_on* are retried; any other error fails the step at once.
    """

    retries: int = 0
    interval: float = 1.0
    backoff: float = 2.0
    max_interval: float = 3600.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ConfigurationError(f"retries must be a whole number >= 0, got {self.retries!r}")
        for what, value, least in (
            ("retry_interval", self.interval, 0.0),
            ("backoff", self.backoff, 1.0),
            ("max_interval", self.max_interval, 0.0),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigurationError(f"{what} must be a finite number, got {value!r}")
            if value < least:
                raise ConfigurationError(f"{what} must be >= {least:g}, got {value!r}")
        retry_on = self.retry_on
        if not all(isinstance(t, type) and issubclass(t, Exception) for t in retry_on):
            raise ConfigurationError(f"retry_on must be an Exception class or a tuple of them, got {retry_on!r}")

    @property
    def max_attempts(self) -> int:
        return self.retries + 1

    def pause_after(self, attempt: int) -> float:
        """Seconds to wait after attempt *attempt* (1-based) failed, before the next one."""
        try:
            pause = self.interval * self.backoff ** (attempt - 1)
        except OverflowError:
            pause = math.inf
        return min(pause, self.max_interval)

    def retries_error(self, exc: BaseException) -> bool:
        return isinstance(exc, self.retry_on)


NO_RETRIES = RetryPolicy()


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)`` on every supported Python (3.10 has no add_note)."""
    notes = getattr(exc, "__notes__", None)
    if not isinstance(notes, list):
        notes = []
        exc.__notes__ = notes
    notes.append(note)


def run_attempts(
    ctx: WorkflowContextProtocol,
    step_id: int,
    name: str,
    call: Callable[[int], Any],
    policy: RetryPolicy,
    started_at: float,
) -> Any:
    """Run attempts of step *step_id* until one returns (its value is returned), the step fails
    (its error is recorded and raised), or a pause must leave the worker (``Suspend`` is raised).

    *call* runs the step body once, given the attempt's number. The first execution to reach the
    step starts at attempt 1; a later one continues from what the workflow row says (see the
    module's invariants).
    """
    record = ctx.workflow
    done = (record.attempts or 0) if record.attempt_step == step_id else 0
    if record.wait_kind == RETRY_WAIT and record.wait_step == step_id and record.deadline is not None:
        pause_until(ctx, step_id, name, record.deadline)  # woken early (a redelivery): wait for what is left
    elif done:
        log.warning(
            "step %s of %s: attempt %d never finished (its worker was lost); counting it",
            name,
            ctx.workflow_id,
            done,
        )
    while True:
        attempt = done + 1
        if attempt > policy.max_attempts:
            lost = StepAttemptLost(
                f"step {name!r} of workflow {ctx.workflow_id!r} made {done} attempt(s), the most it may "
                f"(retries={policy.retries}); the last one never finished because its worker was lost"
            )
            raise ctx.fail_step(step_id, name, lost, started_at)
        start_attempt(ctx, step_id, attempt)
        try:
            return call(attempt)
        except ctx.passthrough:
            raise
        except Exception as exc:
            if attempt >= policy.max_attempts or not policy.retries_error(exc):
                why = "no attempts left" if attempt >= policy.max_attempts else "the error is not in retry_on"
                add_note(
                    exc,
                    f"step {name!r} failed after {attempt} attempt(s) of at most {policy.max_attempts} ({why})",
                )
                ctx.fail_step(step_id, name, exc, started_at)
                raise
            pause = policy.pause_after(attempt)
            log.info(
                "step %s of %s failed (attempt %d/%d, next in %.3g s): %r",
                name,
                ctx.workflow_id,
                attempt,
                policy.max_attempts,
                pause,
                exc,
            )
            pause_until(ctx, step_id, name, ctx.clock() + pause)
            done = attempt


def start_attempt(ctx: WorkflowContextProtocol, step_id: int, attempt: int) -> None:
    """Write that *attempt* of step *step_id* starts now, before it runs."""
    ctx.check_deadline()  # each attempt is a step boundary too
    store, lease = ctx.store, ctx.lease
    ctx.store_call(
        lambda: store.start_attempt(lease, step_id, attempt, ctx.clock()), f"attempt {attempt} of step {step_id}"
    )


def pause_until(ctx: WorkflowContextProtocol, step_id: int, name: str, until: float) -> None:
    """Wait until *until* before the next attempt of step *step_id*: sleep in place for at most
    :data:`IN_PLACE_LIMIT` seconds, otherwise record the wait and leave the worker (``Suspend``)."""
    now = ctx.clock()
    if until - now <= IN_PLACE_LIMIT:
        if until > now:
            ctx.pause(until - now)
        return
    store, lease, horizon = ctx.store, ctx.lease, ctx.config.horizon
    result = ctx.store_call(
        lambda: store.wait_retry(lease, step_id, name, until, now, horizon), f"the retry pause of step {name!r}"
    )
    ctx.suspend(result.dispatch, {"wait": RETRY_WAIT, "step": step_id, "name": name, "until": until})
