"""The workflow engine: replay, step ids, determinism checks and messaging rules.

It imports neither Celery nor SQLAlchemy. A task system hands it a store, a serializer
and a ``publish`` callback, and calls :meth:`Engine.execute` once per task message; the
returned :class:`Outcome` says what the task system must do next (nothing, retry later,
or publish a timer).

Replay: the workflow body runs from the top on every execution. Each durable operation
(step call, ``recv``, ``send``, ``set_event``, ``get_event``, ``sleep``, a ``patched`` that
takes the new branch) takes the next step id from a counter; when a checkpoint exists for
that id its recorded result is returned (after checking that the recorded operation is the
one being called), otherwise the operation runs and its result is written before it returns.

Engine extensions (children.py, retries.py, versioning.py; flow control next) use a workflow's
:class:`WorkflowContext` only through :class:`~celery_durable.extension.WorkflowContextProtocol`;
the API a workflow body calls is in workflow_api.py.

Workflow deadline (``timeout_at``): it is checked before every durable operation and before
the workflow's result is recorded, so a workflow past its deadline stops at the next step
boundary and ends CANCELLED with a :class:`~celery_durable.errors.WorkflowTimedOut` as its
error. Waits arm their timer for the earlier of their own deadline and the workflow's.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, TypeVar

from . import retries, versioning
from .config import DurableConfig
from .errors import (
    ChildWorkflowCancelled,
    DurableError,
    NonDeterministicWorkflow,
    NotInWorkflow,
    PayloadTooLarge,
    SerializationError,
    StoreRejected,
    WorkflowCancelled,
)
from .hooks import Observers
from .outcomes import (
    TIMED_OUT,
    Busy,
    Cancelled,
    Failed,
    Finished,
    Interrupted,
    Outcome,
    Refused,
    Stale,
    Suspend,
    Waiting,
    _Cancelled,
    _ContinueAsNew,
    _Continued,
    _TimedOut,
)
from .retries import NO_RETRIES, RetryPolicy
from .serialization import Serializer, check_stored_text, decode_error, encode_error
from .store import (
    Dispatch,
    Execution,
    Lease,
    StepRecord,
    Store,
    Suspended,
    WaitRequest,
    WorkflowRecord,
    WorkflowStatus,
)
from .timeouts import timed_out
from .validation import MAX_NAME_LENGTH as MAX_ID_LENGTH
from .validation import check_id, check_timeout, check_topic  # noqa: F401 - the input rules moved there; re-exported

log = logging.getLogger("celery_durable")
T = TypeVar("T")
_NOT_DECODED = object()
_IMMUTABLE = frozenset({int, float, str, bool, type(None), bytes})


_CURRENT: contextvars.ContextVar[WorkflowContext | None] = contextvars.ContextVar("celery_durable_ctx", default=None)


def current_context() -> WorkflowContext | None:
    """Return the context of the workflow executing in this thread (its body or one of its steps), if any.

    Only for what a step may read too (``Durable.workflow_id``); whether an operation acts as a
    durable one is :func:`workflow_body`'s answer.
    """
    return _CURRENT.get()


def workflow_body() -> WorkflowContext | None:
    """Return the context of the workflow whose body is executing here: None outside workflows and
    inside a step (where ``send``, ``start``, a step call... act as they do outside workflows).

    Every place that asks "am I inside a workflow?" asks this (or :func:`require_context`).
    """
    ctx = _CURRENT.get()
    return None if ctx is None or ctx.in_step else ctx


def require_context(operation: str) -> WorkflowContext:
    """Return :func:`workflow_body`'s context; raise :class:`NotInWorkflow` naming *operation* when there is none."""
    ctx = _CURRENT.get()
    if ctx is None:
        raise NotInWorkflow(
            f"{operation} can only be called inside a workflow (a function decorated with @durable.workflow)"
        )
    if ctx.in_step:
        raise NotInWorkflow(f"{operation} cannot be called inside a step; call it from the workflow body")
    return ctx


@functools.lru_cache(maxsize=4096)  # every replay names each operation again: hash long names once
def op_name(kind: str, *parts: str) -> str:
    """The checkpoint name of operation *kind* on *parts* (hashed when it would pass the id length limit)."""
    name = ":".join((kind, *parts))
    if len(name) <= MAX_ID_LENGTH:
        return name
    return f"{kind}:#{hashlib.sha256(name.encode()).hexdigest()}"


class Engine:
    """Runs workflow executions against a store."""

    def __init__(
        self,
        store: Store,
        serializer: Serializer,
        config: DurableConfig,
        publish: Callable[[Dispatch], None],
        *,
        passthrough: tuple[type[BaseException], ...] = (),
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        observers: Observers | None = None,
        on_outcome: Callable[[Outcome], None] | None = None,
    ) -> None:
        self.store = store
        self.serializer = serializer
        self.config = config
        self._publish = publish
        self.passthrough = passthrough
        self.clock = clock
        self.sleep = sleep  # only for pauses of at most retries.IN_PLACE_LIMIT seconds
        self.observers = observers if observers is not None else Observers()  # see hooks.py
        #: Called with each execution's outcome before its lock is released (a wait's lock is still
        #: held then), so what the task system reports of it (a task state) cannot overtake what the
        #: next execution of the workflow reports. It must not raise; an error is logged.
        self.on_outcome = on_outcome

    # -- helpers shared with the public API ----------------------------------------------------
    def encode_payload(self, value: Any, what: str) -> str:
        text = check_stored_text(self.serializer.dumps(value), what)
        size = len(text.encode())
        if size > self.config.max_payload:
            raise PayloadTooLarge(
                f"{what} is {size} bytes once serialized, over the limit of {self.config.max_payload} bytes "
                "(DurableConfig.max_payload)"
            )
        return text

    def publish_all(self, dispatches: Sequence[Dispatch]) -> None:
        """Publish wake-ups; a failure is logged, never raised: the store already says what to do,
        and the sweep publishes again what was lost."""
        for dispatch in dispatches:
            try:
                self.observers.wakeup(dispatch, functools.partial(self._publish, dispatch)) if self.observers else self._publish(dispatch)  # observer hook
            except Exception:
                log.warning("could not publish a wake-up for %s; the sweep will", dispatch.workflow_id, exc_info=True)

    # -- one execution ----------------------------------------------------------------------------
    def execute(self, workflow_id: str, ticket: int, name: str, fn: Callable[..., Any]) -> Outcome:
        """Run the workflow once for a task message carrying *ticket*.

        Invariant: the body runs only while this process holds the workflow's execution lock and
        *ticket* is current, so two deliveries never run one step body at the same time.
        """
        try:
            lease, execution = self.store.claim(workflow_id, ticket, self.clock())
        except Exception as exc:  # nothing happened: try again later, unless it can never pass
            return Interrupted(exc) if self.store.is_transient(exc) else Refused(exc)
        if lease is None:
            # Held by someone else. A message whose ticket is no longer current (say a redelivered
            # duplicate of a message the sweep already replaced) is dropped now instead of waiting.
            try:
                record = self.store.get_workflow(workflow_id)
            except Exception as exc:
                return Interrupted(exc) if self.store.is_transient(exc) else Refused(exc)
            if record is None or record.status.is_terminal or record.ticket != ticket:
                return Stale()
            return Busy()
        try:
            if execution is None:
                return Stale()
            while True:
                run = functools.partial(self._execute_locked, lease, execution, name, fn)
                outcome = self.observers.execution(execution.workflow, run) if self.observers else run()  # observer hook
                if not isinstance(outcome, _Continued):
                    break
                # continue_as_new committed: the new run starts here, under the same lock.
                execution = outcome.execution
            if self.on_outcome is not None:
                try:
                    self.on_outcome(outcome)
                except Exception:
                    log.warning("reporting the outcome of %s failed", workflow_id, exc_info=True)
            return outcome
        finally:
            self.store.release(lease)

    def _execute_locked(self, lease: Lease, execution: Execution, name: str, fn: Callable[..., Any]) -> Outcome:
        record = execution.workflow
        ctx = WorkflowContext(self, lease, record, execution.steps)
        token = _CURRENT.set(ctx)
        try:
            if record.name != name:
                raise NonDeterministicWorkflow(
                    f"workflow {record.workflow_id!r} was started as {record.name!r} but this message runs {name!r}"
                )
            ctx.check_deadline()  # a timer armed for the workflow's deadline lands here
            inputs = self.serializer.loads(record.inputs)
            value = fn(*inputs["args"], **inputs["kwargs"])
            if ctx.store_error is not None:  # the body swallowed a store failure: its work is not all written
                return Interrupted(ctx.store_error)
            ctx.check_deadline()  # no result is recorded after the deadline either
            try:
                output = check_stored_text(self.serializer.dumps(value), "the output")
            except SerializationError as exc:
                raise SerializationError(
                    f"workflow {record.workflow_id!r} returned a value that cannot be stored: {exc}"
                ) from None
        except Suspend as suspend:
            return Waiting(suspend.dispatch, suspend.wait)
        except _ContinueAsNew as cont:
            return self._continue_as_new(lease, record, cont.inputs)
        except _TimedOut as stop:
            log.warning("workflow %s stopped: %s", record.workflow_id, stop.error)
            outcome = self._finish(
                lease, WorkflowStatus.CANCELLED, None, encode_error(stop.error), Cancelled(stop.error, record)
            )
            # Hook (children): stop its unfinished children too. Best effort: they inherited this
            # deadline at start (children.py), so each stops by itself if this is lost.
            try:
                self.store.cancel_descendants(record.workflow_id, self.clock())
            except Exception:
                log.warning("could not cancel the children of %s; their deadline will", record.workflow_id, exc_info=True)
            return outcome
        except ChildWorkflowCancelled as exc:  # hook (children): a child's cancel is an error of this body, not its cancel
            if ctx.store_error is not None:
                return Interrupted(ctx.store_error)
            return self._finish(lease, WorkflowStatus.ERROR, None, encode_error(exc), Failed(exc, record))
        except (_Cancelled, WorkflowCancelled):
            return Cancelled(None, record)
        except self.passthrough as exc:
            return Interrupted(exc)
        except Exception as exc:
            if ctx.store_error is not None:
                return Interrupted(ctx.store_error)
            return self._finish(lease, WorkflowStatus.ERROR, None, encode_error(exc), Failed(exc, record))
        finally:
            _CURRENT.reset(token)
        return self._finish(lease, WorkflowStatus.SUCCESS, output, None, Finished(value, record))

    def _continue_as_new(self, lease: Lease, record: WorkflowRecord, inputs: str) -> Outcome:
        try:
            new = self.store.continue_as_new(lease, inputs, self.clock())
        except WorkflowCancelled:
            return Cancelled(None, record)
        except Exception as exc:
            if self.store.is_transient(exc) or isinstance(exc, DurableError):
                return Interrupted(exc)
            rejected = StoreRejected.refused(exc, "the inputs of continue_as_new", record.workflow_id)
            return self._finish(lease, WorkflowStatus.ERROR, None, encode_error(rejected), Failed(rejected, record))
        return _Continued(Execution(new, {}))

    def _finish(
        self, lease: Lease, status: WorkflowStatus, output: str | None, error: str | None, outcome: Outcome
    ) -> Outcome:
        try:
            wakeups = self.store.finish(lease, status, output, error, self.clock())
        except Exception as exc:
            if self.store.is_transient(exc):
                return Interrupted(exc)
            if status != WorkflowStatus.SUCCESS:
                return Refused(exc)
            # The output itself was refused (a custom serializer's text): record that as the error.
            rejected = StoreRejected.refused(exc, "the workflow's output", lease.workflow_id)
            record = outcome.workflow if isinstance(outcome, Finished) else None
            return self._finish(lease, WorkflowStatus.ERROR, None, encode_error(rejected), Failed(rejected, record))
        if wakeups:  # hook (children): a parent waiting for this workflow
            self.publish_all(wakeups)
        return outcome


class WorkflowContext:
    """State of one execution: its lease, recorded checkpoints and the step counter.

    *workflow* is the row as this execution claimed it (its deadline, the attempt counter and
    the wait it was woken from); *patches* memoises ``patched`` answers (see versioning.py).
    Engine extensions use it only through
    :class:`~celery_durable.extension.WorkflowContextProtocol`, which it implements.
    """

    def __init__(self, engine: Engine, lease: Lease, workflow: WorkflowRecord, steps: dict[int, StepRecord]) -> None:
        self.engine = engine
        self.lease = lease
        self.workflow = workflow
        self.workflow_id = workflow.workflow_id
        self._steps = steps
        self._next_step_id = 0
        self.in_step = False
        self.store_error: BaseException | None = None
        self.patches: dict[str, bool] = {}
        self.replies_fast = False  # a reply came within adaptive_linger: the next recv lingers (see _linger)
        # The engine's parts, read-only for extensions (extension.py declares them as properties).
        self.store, self.config, self.serializer = engine.store, engine.config, engine.serializer
        self.observers, self.passthrough = engine.observers, engine.passthrough

    # -- the extension protocol (extension.py): read-only state ---------------------------------------
    @property
    def checkpoints(self) -> Mapping[int, StepRecord]:
        return self._steps

    def clock(self) -> float:
        return self.engine.clock()

    def pause(self, seconds: float) -> None:
        self.engine.sleep(seconds)

    # -- the extension protocol: step ids, checkpoints, writes -------------------------------------------
    def check_deadline(self) -> None:
        """Stop the workflow (``_TimedOut``) when its own deadline has passed."""
        timeout_at = self.workflow.timeout_at
        if timeout_at is not None and self.engine.clock() >= timeout_at:
            raise _TimedOut(timed_out(self.workflow_id, timeout_at))

    def next_step_id(self) -> int:
        """The step id the next durable operation will take, without taking it."""
        return self._next_step_id

    def take_step(self) -> int:
        """Take the next step id. Every durable operation starts here: the step boundary where a
        passed deadline stops the workflow."""
        self.check_deadline()
        step_id = self._next_step_id
        self._next_step_id += 1
        return step_id

    def recorded(self, step_id: int, name: str, kind: str) -> StepRecord | None:
        """The checkpoint at *step_id*, None if there is none; ``NonDeterministicWorkflow`` if it is another operation."""
        recorded = self._steps.get(step_id)
        if recorded is not None and (recorded.name != name or recorded.kind != kind):
            hint = versioning.misplaced_hint(recorded)
            raise NonDeterministicWorkflow(
                f"workflow {self.workflow_id!r} is not deterministic: step {step_id} was recorded as "
                f"{recorded.kind} {recorded.name!r} but the code now calls {kind} {name!r}{hint}"
            )
        return recorded

    def store_call(self, call: Callable[[], T], what: str) -> T:
        """Run a store call for the operation *what*.

        A failure that may pass (connection lost, deadlock, ...) or a lost claim is remembered, so the
        execution ends as Interrupted (retried), not ERROR. A permanent one (a value the database
        cannot hold) raises :class:`StoreRejected` in the body instead: retrying would loop forever.
        """
        try:
            return call()
        except WorkflowCancelled:
            raise _Cancelled() from None
        except Exception as exc:
            if isinstance(exc, DurableError) or self.engine.store.is_transient(exc):
                self.store_error = exc
                raise
            raise StoreRejected.refused(exc, what, self.workflow_id) from exc

    def decode_output(self, step: StepRecord) -> Any:
        """The value checkpoint *step* recorded, or raise the error it recorded."""
        if step.error is not None:
            raise decode_error(step.error)
        if step.output is None:
            return None
        # Checkpoints outlive executions in the store's per-process cache, so a replay decodes each
        # output once: an immutable value is memoised on the record (not a field: equality, repr and
        # the store never see it). A mutable one is decoded afresh, so the body may change it freely.
        memo = step.__dict__.get("_decoded", _NOT_DECODED)
        if memo is not _NOT_DECODED:
            return memo
        value = self.engine.serializer.loads(step.output)
        if type(value) in _IMMUTABLE:
            object.__setattr__(step, "_decoded", value)
        return value

    def publish(self, dispatches: Sequence[Dispatch]) -> None:
        """Publish wake-ups the store returned; a failure is logged, never raised (``Engine.publish_all``)."""
        self.engine.publish_all(dispatches)

    def suspend(self, dispatch: Dispatch | None, wait: dict[str, Any]) -> NoReturn:
        """Leave the worker: the wait is recorded, *dispatch* is its timer (if any), *wait* what it waits for."""
        raise Suspend(dispatch, wait)

    # -- operations ---------------------------------------------------------------------------------
    def run_step(
        self,
        name: str,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        policy: RetryPolicy = NO_RETRIES,
        before: Callable[[WorkflowContext, int, str], None] | None = None,
    ) -> T:
        """Run step *name* (or return its checkpoint). *before* (an extension's gate: a rate limit's
        turn, flow_rate.py) is called with this context, the step id and the name when the step has
        no checkpoint, before it runs; it may sleep or leave the worker (``Suspend``)."""
        step_id = self.take_step()
        recorded = self.recorded(step_id, name, "step")
        if recorded is not None:
            return self.decode_output(recorded)
        if before is not None:
            before(self, step_id, name)
        engine = self.engine
        started = engine.clock()

        def call(attempt: int = 1) -> T:  # retries.py passes the attempt it runs
            self.in_step = True
            try:
                if engine.observers:  # observer hook
                    return engine.observers.step(self, step_id, name, attempt, lambda: fn(*args, **kwargs))
                return fn(*args, **kwargs)
            finally:
                self.in_step = False

        if policy.retries:
            value = retries.run_attempts(self, step_id, name, call, policy, started)
        else:
            try:
                value = call()
            except engine.passthrough:
                raise
            except Exception as exc:
                self.fail_step(step_id, name, exc, started)
                raise
        try:
            output = check_stored_text(engine.serializer.dumps(value), "the output")
        except SerializationError as exc:
            raise SerializationError(f"step {name!r} returned a value that cannot be stored: {exc}") from None
        step = StepRecord(self.workflow_id, step_id, name, "step", output, None, None, started, engine.clock())
        stored = self.store_call(lambda: engine.store.record_step(self.lease, step), f"step {name!r}")
        # Whoever wrote first wins: return the stored output, not ours, if they differ.
        return value if stored is step else self.decode_output(stored)

    def fail_step(self, step_id: int, name: str, exc: BaseException, started: float) -> BaseException:
        """Record *exc* as step *step_id*'s outcome (a replay raises it again); return it."""
        engine = self.engine
        failed = StepRecord(
            self.workflow_id, step_id, name, "step", None, encode_error(exc), None, started, engine.clock()
        )
        self.store_call(functools.partial(engine.store.record_step, self.lease, failed), f"step {name!r}")
        return exc

    def _wait(
        self, name: str, kind: str, topics: tuple[str, ...], target: str | None, timeout: float | None
    ) -> StepRecord | None:
        """Run a waiting operation; return its checkpoint, or None when it timed out."""
        step_id = self.take_step()
        recorded = self.recorded(step_id, name, kind)
        if recorded is None:
            engine = self.engine
            request = WaitRequest(step_id, name, kind, topics, target, timeout, engine.clock(), engine.config.horizon)
            # The recv this execution was woken for: its message is most likely there (take_recv).
            woken_here = kind == "recv" and step_id == self.workflow.wait_step and self.workflow.wait_kind == "recv"

            def wait() -> StepRecord:
                taken: StepRecord | None = None
                if woken_here:
                    taken = self.store_call(lambda: engine.store.take_recv(self.lease, request), f"{kind} {name!r}")
                linger = self._linger(timeout) if kind == "recv" and taken is None else 0.0
                if linger > 0:
                    # Wait in place briefly (store.linger_recv says why no message can be lost): a reply
                    # within it continues here, without leaving and replaying.
                    taken = self.store_call(lambda: engine.store.linger_recv(self.lease, request, linger), f"{kind} {name!r}")
                    self.replies_fast = taken is not None
                if taken is not None:
                    return taken
                result = self.store_call(lambda: engine.store.wait_step(self.lease, request), f"{kind} {name!r}")
                if isinstance(result, Suspended):
                    wait: dict[str, Any] = {"wait": kind, "step": step_id, "topics": list(topics), "timeout": timeout}
                    if target is not None:
                        wait["workflow_id"] = target
                    raise Suspend(result.dispatch, wait)
                return result

            recorded = engine.observers.wait(self, request, wait) if engine.observers else wait()  # observer hook
            if woken_here:
                self.replies_fast = self._answered_fast(step_id, recorded)
        if recorded.output is None and recorded.error is None:
            return None
        return recorded

    def _linger(self, timeout: float | None) -> float:
        """Seconds a new ``recv`` that finds nothing waits in place before it records its wait.

        ``recv_linger`` always; ``adaptive_linger`` (if longer) only while replies come fast: the
        wait this execution was woken from was answered within it, or the last linger here caught
        its message. A workflow whose replies are slow (or that never waited) leaves at once, so the
        slot is held only where lingering pays; one linger that catches nothing turns it off again.
        """
        config = self.engine.config
        linger = config.recv_linger
        if self.replies_fast and config.adaptive_linger > linger:
            linger = config.adaptive_linger
        return linger if timeout is None else min(linger, timeout)

    def _answered_fast(self, step_id: int, recorded: StepRecord) -> bool:
        """Whether the recv at *step_id*, the wait this execution was woken from, got its message within
        ``adaptive_linger`` of the wait's start (the end of the checkpoint before it, or the workflow's
        start): an upper bound of the reply's delay, as it also counts the wake-up's own hop."""
        if recorded.output is None:  # timed out: not a reply
            return False
        before = self._steps.get(step_id - 1) if step_id > 0 else None
        began = before.ended_at if before is not None else self.workflow.created_at if step_id == 0 else None
        return began is not None and recorded.ended_at - began <= self.engine.config.adaptive_linger

    def recv(self, topics: tuple[str, ...], timeout: float | None) -> tuple[str, Any]:
        step = self._wait(op_name("recv", ",".join(topics)), "recv", topics, None, timeout)
        if step is None:
            return "", TIMED_OUT
        return step.topic or "", self.decode_output(step)

    def get_event(self, workflow_id: str, key: str, timeout: float | None) -> Any:
        step = self._wait(op_name("get_event", workflow_id, key), "event", (key,), workflow_id, timeout)
        return TIMED_OUT if step is None else self.decode_output(step)

    def sleep(self, seconds: float) -> None:
        self._wait("sleep", "sleep", (), None, seconds)

    def patched(self, patch: str) -> bool:
        return versioning.patched(self, patch, op_name("patch", patch))

    def deprecate_patch(self, patch: str) -> None:
        versioning.deprecate_patch(self, patch, op_name("patch", patch))

    def continue_as_new(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """End this run and start the workflow again with these inputs and an empty history (same id, same lock).

        Takes effect at once (it raises through the body): the history is replaced atomically by
        ``Store.continue_as_new`` and the body runs again from the top in this execution.
        """
        self.check_deadline()
        try:
            inputs = check_stored_text(self.engine.serializer.dumps({"args": list(args), "kwargs": kwargs}), "the arguments")
        except SerializationError as exc:
            raise SerializationError(f"continue_as_new of workflow {self.workflow_id!r}: {exc}") from None
        raise _ContinueAsNew(inputs)

    def send(self, destination: str, topic: str, payload: str, create_mailbox: bool) -> None:
        step_id = self.take_step()
        name = op_name("send", destination, topic)
        if self.recorded(step_id, name, "send") is not None:
            return  # sent by an earlier execution: never again
        engine = self.engine
        now = engine.clock()
        checkpoint = StepRecord(self.workflow_id, step_id, name, "send", "null", None, topic, now, now)

        def send() -> None:
            result = self.store_call(
                lambda: engine.store.send(
                    destination, topic, payload, now, create_mailbox=create_mailbox, lease=self.lease, checkpoint=checkpoint
                ),
                f"send to {destination!r}",
            )
            engine.publish_all(result.wakeups)

        engine.observers.send(self.workflow_id, destination, topic, send) if engine.observers else send()  # observer hook

    def set_event(self, key: str, value: str) -> None:
        step_id = self.take_step()
        name = op_name("set_event", key)
        if self.recorded(step_id, name, "set_event") is not None:
            return
        engine = self.engine
        now = engine.clock()
        # The checkpoint keeps the key (as its topic) and the value: a fork rebuilds its events from them.
        checkpoint = StepRecord(self.workflow_id, step_id, name, "set_event", value, None, key, now, now)
        wakeups = self.store_call(lambda: engine.store.set_event(self.lease, key, value, checkpoint), f"set_event {key!r}")
        engine.publish_all(wakeups)
